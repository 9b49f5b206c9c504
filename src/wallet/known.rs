//! What this process last saw of its wallets' funds, as its own commits left them.
//!
//! A batch on the Redis path decides a wallet without reading its row when this process
//! remembers it from the last holder of its lock, this process itself: the counter the
//! lock's acquisition found is the token of the batch that left the funds remembered, so
//! no one took the lock in between (`lua/lib/acquire.lua`). It is never trusted beyond
//! that: the batch's `UPDATE wallets` matches only a row whose balance and sum held are
//! still what was remembered (and whose fencing token is not newer), and a refusal
//! decided from memory is decided again from the row. When the memory was wrong (the
//! fallback path wrote, a lease ran out), the batch rolls back and runs again reading
//! its rows ([`crate::wallet::attempt::Failure::Guessed`]).

use std::collections::HashMap;
use std::sync::Mutex;

use super::rules::Funds;

/// Past this many wallets the memory starts again empty: a bound, not a cache policy;
/// a wallet forgotten is read from its row once.
const CAPACITY: usize = 200_000;

/// Each wallet's funds as this process's last batch under its lock left them, and that
/// batch's fencing token.
#[derive(Default)]
pub struct KnownFunds {
    wallets: Mutex<HashMap<String, (Funds, u64)>>,
}

impl KnownFunds {
    pub fn get(&self, user_id: &str) -> Option<(Funds, u64)> {
        self.lock().get(user_id).copied()
    }

    /// Records the funds a batch committed (or read, or found as remembered) for each
    /// wallet, under the token it held.
    pub fn remember<'a>(&self, funds: impl IntoIterator<Item = (&'a str, Funds, u64)>) {
        let mut wallets = self.lock();
        for (user_id, funds, token) in funds {
            if let Some(known) = wallets.get_mut(user_id) {
                *known = (funds, token);
                continue;
            }
            if wallets.len() >= CAPACITY {
                wallets.clear();
            }
            wallets.insert(user_id.to_owned(), (funds, token));
        }
    }

    /// Forgets wallets whose memory proved wrong, or whose fate is unknown.
    pub fn forget<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        let mut wallets = self.lock();
        for user_id in user_ids {
            wallets.remove(user_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Funds, u64)>> {
        // A panic while holding it leaves a map that is still a valid guess.
        self.wallets.lock().unwrap_or_else(|e| e.into_inner())
    }
}
