//! The per-wallet Redis lock: taken for a whole batch of wallets in one round trip,
//! with the batch's idempotency claims, and released with its cached replies
//! (`steps.rs`, `lua/batch_*.lua`), a fencing token per wallet and acquisition, a lease
//! renewed while held (`lua/lock_extend.lua`), and waiters woken by pub/sub
//! ([`releases`]).
//!
//! The lock keeps a wallet's requests out of each other's way; it does not keep money
//! safe on its own. The database refuses a write whose fencing token is older than one it
//! has already seen, so a holder that lost its lease cannot write after its successor.
//!
//! # Tokens across a Redis data loss
//!
//! That only holds if a successor's token is above its predecessor's even when Redis
//! lost the counter in between (a restart without persistence, a failover to a replica
//! that lagged, an older snapshot restored). So the counter follows Redis's clock
//! (`lua/lib/acquire.lua`): each acquisition sets it to the larger of the counter and
//! the time in microseconds since the epoch, plus one, so a token issued at Redis time
//! `t` is `t + 1`, a few more if several fall in one microsecond. The first token
//! issued after a loss, at time `t'`, is at least `t' + 1`, above every token issued before it, provided Redis's clock
//! read later at `t'` than at the last token before the loss, by more than the counter
//! ran ahead of the clock then. A restart takes far longer than a microsecond, so the
//! condition fails only if the clock was stepped back across it, or if a failover lands
//! on a machine whose clock is behind by more than the outage lasted. The counter runs
//! ahead of the clock only after a jump (below): by [`REFENCE_MARGIN`] plus however far
//! the clock was behind, until the clock catches up.
//!
//! If the clock did go back, the database notices at the first write: its row holds a
//! token above the new one. [`WalletLock::refence_batch`] then moves the counter
//! [`REFENCE_MARGIN`] past the row's token (or the clock, if that is further), so holders
//! from before the loss stay below as long as they got their token less than that
//! margin after the one the row holds. The database's maximum alone would not do: a
//! wallet the database has never fenced holds 0, and acquisitions that wrote nothing (a
//! refused payment, a replay) leave tokens above the row's.

mod releases;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::Script;
use tokio::time::Instant;

use crate::configuration::LockSettings;
use crate::domain::Identifier;
use crate::redis_support::{bounded, per_slot, KeySpace, RedisFault, SlotAware};
use releases::Releases;
pub use steps::{Begun, InCache};

/// How far past the database's token [`WalletLock::refence_batch`] moves a counter found
/// behind it, in the clock's time (tokens are microseconds). It must cover the tokens
/// handed out after the database's last write of the wallet and before Redis lost its
/// data. An hour is far more than a request lives; larger would keep the counter ahead
/// of the clock for longer, and a second loss in that time could repeat tokens.
pub const REFENCE_MARGIN: Duration = Duration::from_secs(3_600);

/// After a release another instance was waiting for, how long this instance's next
/// holder stands back: enough for the pub/sub message and the other's acquire.
pub const YIELD: Duration = Duration::from_millis(3);

/// The Redis locks one batch holds, under one owner token. Give them back with
/// [`WalletLock::finish_batch`] or [`WalletLock::release_batch`]; dropped, they run out
/// with their lease.
pub struct BatchLocks {
    owner: String,
    /// When the leases were last set: taken or renewed.
    taken_at: Instant,
    /// The wallets held.
    held: Vec<Held>,
}

/// One wallet a batch holds.
struct Held {
    user_id: Identifier,
    /// Its fencing token.
    fence: u64,
    /// The note the wallet's last holder left at release, when no one took the lock
    /// since (`lua/lib/acquire.lua`).
    found: Option<String>,
    /// The note this batch leaves at release, if any.
    leave: Option<String>,
}

impl BatchLocks {
    fn get(&self, user_id: &str) -> Option<&Held> {
        self.held
            .iter()
            .find(|held| held.user_id.as_str() == user_id)
    }

    fn get_mut(&mut self, user_id: &str) -> Option<&mut Held> {
        self.held
            .iter_mut()
            .find(|held| held.user_id.as_str() == user_id)
    }

    /// The fencing token of `user_id`'s lock, if the batch holds it.
    pub fn fence(&self, user_id: &str) -> Option<u64> {
        self.get(user_id).map(|held| held.fence)
    }

    /// What `user_id`'s last holder noted of it at release, if the batch holds it and
    /// no one held it in between. A hint: whoever writes past the lock (the fallback
    /// path) does not update it, and Redis may have lost the latest one.
    pub fn found_note(&self, user_id: &str) -> Option<&str> {
        self.get(user_id)?.found.as_deref()
    }

    /// Leaves `note` for `user_id`'s next holder, written when the lock is released
    /// (and only if this batch still owns it then).
    pub fn leave_note(&mut self, user_id: &str, note: String) {
        if let Some(held) = self.get_mut(user_id) {
            held.leave = Some(note);
        }
    }

    /// Leaves no note for any wallet (what was decided did not commit).
    pub fn leave_no_notes(&mut self) {
        self.held.iter_mut().for_each(|held| held.leave = None);
    }
}

/// The lock service; cheap to clone.
#[derive(Clone)]
pub struct WalletLock {
    keys: KeySpace,
    settings: LockSettings,
    timeout: Duration,
    releases: Arc<Releases>,
    scripts: Arc<Scripts>,
}

/// A batch's start (`lua/batch_begin.lua` after the functions it calls): claims its keys
/// and takes its wallets' locks ([`WalletLock::begin_batch`]).
pub fn batch_begin_script() -> Script {
    Script::new(concat!(
        include_str!("../../lua/lib/entry.lua"),
        include_str!("../../lua/lib/claim.lua"),
        include_str!("../../lua/lib/fence.lua"),
        include_str!("../../lua/lib/acquire.lua"),
        include_str!("../../lua/batch_begin.lua")
    ))
}

struct Scripts {
    /// A batch's start and end (`steps.rs`).
    begin: Script,
    finish: Script,
    extend: Script,
    refence: Script,
}

impl WalletLock {
    /// Builds the lock, and the listener that hears releases ([`LockUpkeep`]), which
    /// the application runs as a task of its own.
    pub fn new(
        nodes: crate::redis_support::PubSubNodes,
        keys: KeySpace,
        settings: LockSettings,
        timeout: Duration,
    ) -> (Self, LockUpkeep) {
        let lock = Self {
            keys,
            settings,
            timeout,
            releases: Arc::new(Releases::default()),
            scripts: Arc::new(Scripts {
                begin: batch_begin_script(),
                finish: Script::new(concat!(
                    include_str!("../../lua/lib/entry.lua"),
                    include_str!("../../lua/lib/settle.lua"),
                    include_str!("../../lua/lib/release.lua"),
                    include_str!("../../lua/batch_finish.lua")
                )),
                extend: Script::new(include_str!("../../lua/lock_extend.lua")),
                refence: Script::new(concat!(
                    include_str!("../../lua/lib/fence.lua"),
                    include_str!("../../lua/lock_refence.lua")
                )),
            }),
        };
        let upkeep = LockUpkeep {
            lock: lock.clone(),
            nodes,
        };
        (lock, upkeep)
    }

    /// Moves `owner`'s token of `user_id` [`REFENCE_MARGIN`] past `seen_by_database`
    /// (Redis lost the counter and its clock is behind the one that issued the
    /// database's token): the new token, or `None` when `owner` no longer holds it.
    async fn refence_owned<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        user_id: &Identifier,
        owner: &str,
        seen_by_database: u64,
    ) -> Result<Option<u64>, RedisFault> {
        let mut invocation = self.scripts.refence.prepare_invoke();
        invocation
            .key(self.keys.lock(user_id))
            .key(self.keys.fence(user_id))
            .arg(owner)
            .arg(seen_by_database)
            .arg(REFENCE_MARGIN.as_micros() as u64);
        let fence: u64 = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        Ok((fence > 0).then_some(fence))
    }

    /// Renews every lease of a batch in one round trip (one call per node on a
    /// cluster), once a third of the lease has passed since they were set. Returns false
    /// when one was lost: the batch must not commit.
    pub async fn renew_batch<C: SlotAware>(
        &self,
        conn: &mut C,
        locks: &mut BatchLocks,
    ) -> Result<bool, RedisFault> {
        if locks.held.is_empty() || locks.taken_at.elapsed() < self.settings.lease / 3 {
            return Ok(true);
        }
        let renewed_at = Instant::now();
        let held = &locks.held;
        let lock_key = |i: usize| self.keys.lock(&held[i].user_id);
        let renewed: Vec<(Vec<usize>, usize)> = bounded(
            self.timeout,
            per_slot(
                conn,
                &self.scripts.extend,
                held.len(),
                lock_key,
                |call, items| {
                    call.arg(&locks.owner)
                        .arg(self.settings.lease.as_millis() as u64);
                    for &i in items {
                        call.key(lock_key(i));
                    }
                },
            ),
        )
        .await?;
        let renewed: usize = renewed.into_iter().map(|(_, count)| count).sum();
        locks.taken_at = renewed_at;
        Ok(renewed == locks.held.len())
    }

    /// Moves one wallet's token of a batch [`REFENCE_MARGIN`] past `seen_by_database`
    /// (Redis lost the counter and its clock is behind the one that issued the
    /// database's token). Returns false when the batch no longer owns that lock.
    pub async fn refence_batch<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        locks: &mut BatchLocks,
        user_id: &str,
        seen_by_database: u64,
    ) -> Result<bool, RedisFault> {
        // The fields apart: the owner is read while the held wallet changes.
        let Some(held) = locks
            .held
            .iter_mut()
            .find(|held| held.user_id.as_str() == user_id)
        else {
            return Ok(false);
        };
        match self
            .refence_owned(conn, &held.user_id, &locks.owner, seen_by_database)
            .await?
        {
            Some(fence) => {
                held.fence = fence;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// How many releases have been announced on the channel so far, for any wallet.
    pub fn release_count(&self) -> u64 {
        self.releases.count()
    }

    /// Resolves at the next lock release announced on the channel, for any wallet.
    pub fn any_release(&self) -> tokio::sync::futures::Notified<'_> {
        self.releases.any()
    }
}

/// The lock's background work: the pub/sub listener that hears a holder announce a
/// release (one connection per process), so jobs waiting for a wallet another process
/// held are tried again at once ([`LockUpkeep::listen`]).
pub struct LockUpkeep {
    lock: WalletLock,
    nodes: crate::redis_support::PubSubNodes,
}

impl LockUpkeep {
    /// The listener, for as long as the lock service lives.
    pub fn listen(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        releases::listen(
            Arc::downgrade(&self.lock.releases),
            self.nodes,
            self.lock.keys.release_channel(),
        )
    }
}

/// A random duration between half and all of `d`, so waiters do not poll in step.
pub fn jitter(d: Duration) -> Duration {
    let millis = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}
