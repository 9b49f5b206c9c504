//! What this process last saw of its wallets' funds, as its own commits left them.
//!
//! A batch on the Redis path decides a wallet it remembers without reading its row: the
//! lock makes this process the wallet's usual only writer, so the memory is right as
//! long as nothing else wrote. It is never trusted for that: the batch's `UPDATE wallets`
//! matches only a row whose balance and sum held are still what was remembered (and
//! whose fencing token is not newer), and a refusal decided from memory is decided again
//! from the row. When the memory was wrong (another instance or the fallback path wrote,
//! a lease was lost, the process restarted elsewhere), the batch rolls back and runs
//! again reading its rows ([`crate::wallet::attempt::Failure::Guessed`]).

use std::collections::HashMap;
use std::sync::Mutex;

use super::rules::Funds;

/// Past this many wallets the memory starts again empty: a bound, not a cache policy;
/// a wallet forgotten is read from its row once.
const CAPACITY: usize = 200_000;

/// Each wallet's funds as this process's last commit left them.
#[derive(Default)]
pub struct KnownFunds {
    wallets: Mutex<HashMap<String, Funds>>,
}

impl KnownFunds {
    pub fn get(&self, user_id: &str) -> Option<Funds> {
        self.lock().get(user_id).copied()
    }

    /// Records the funds committed (or read under the row lock) for each wallet.
    pub fn remember<'a>(&self, funds: impl IntoIterator<Item = (&'a str, Funds)>) {
        let mut wallets = self.lock();
        for (user_id, funds) in funds {
            if let Some(known) = wallets.get_mut(user_id) {
                *known = funds;
                continue;
            }
            if wallets.len() >= CAPACITY {
                wallets.clear();
            }
            wallets.insert(user_id.to_owned(), funds);
        }
    }

    /// Forgets wallets whose memory proved wrong, or whose fate is unknown.
    pub fn forget<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        let mut wallets = self.lock();
        for user_id in user_ids {
            wallets.remove(user_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Funds>> {
        // A panic while holding it leaves a map that is still a valid guess.
        self.wallets.lock().unwrap_or_else(|e| e.into_inner())
    }
}
