//! The per-wallet Redis lock: Lua scripts in `lua/lock_*.lua`, a fencing token per
//! acquisition, a lease renewed while held, and waiters woken by pub/sub.
//!
//! The lock keeps a wallet's requests out of each other's way; it does not keep money
//! safe on its own. The database refuses a write whose fencing token is older than one it
//! has already seen, so a holder that lost its lease cannot write after its successor.

mod slots;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::Script;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::configuration::LockSettings;
use crate::domain::Identifier;
use crate::redis_support::{bounded, KeySpace, RedisFault};
use slots::{LocalTurn, Slots};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the wallet stayed locked for the whole wait")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] RedisFault),
}

/// A held wallet lock. Give it back with [`WalletLock::release`].
pub struct LockGuard {
    user_id: Identifier,
    owner: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    renewal: Option<AbortHandle>,
    _turn: LocalTurn,
}

impl LockGuard {
    /// The fencing token of this acquisition; the database refuses older ones.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// True once a renewal failed: the lease may have passed to someone else, so the
    /// holder must not commit.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

/// The lock service; cheap to clone.
#[derive(Clone)]
pub struct WalletLock {
    pool: deadpool_redis::Pool,
    keys: KeySpace,
    settings: LockSettings,
    timeout: Duration,
    renew: bool,
    slots: Arc<Slots>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
    refence: Script,
}

impl WalletLock {
    /// Builds the lock and starts its pub/sub listener (one connection per process).
    pub fn new(
        pool: deadpool_redis::Pool,
        client: redis::Client,
        keys: KeySpace,
        settings: LockSettings,
        timeout: Duration,
        renew: bool,
    ) -> Self {
        let slots = Arc::new(Slots::default());
        tokio::spawn(Slots::listen(
            Arc::downgrade(&slots),
            client,
            keys.release_channel(),
        ));
        Self {
            pool,
            keys,
            settings,
            timeout,
            renew,
            slots,
            scripts: Arc::new(Scripts {
                acquire: Script::new(include_str!("../../lua/lock_acquire.lua")),
                release: Script::new(include_str!("../../lua/lock_release.lua")),
                extend: Script::new(include_str!("../../lua/lock_extend.lua")),
                refence: Script::new(include_str!("../../lua/lock_refence.lua")),
            }),
        }
    }

    /// Takes `user_id`'s lock, waiting at most until `deadline`.
    ///
    /// Waiters queue locally first; the head of the queue tries Redis, then sleeps until
    /// a release is announced or a short jittered poll interval passes (the safety net
    /// for a lost message or an expired lease), whichever comes first.
    pub async fn acquire<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        user_id: &Identifier,
        deadline: Instant,
    ) -> Result<LockGuard, LockError> {
        let turn = self
            .slots
            .enter(user_id, deadline)
            .await
            .ok_or(LockError::Timeout)?;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let lease_ms = self.settings.lease.as_millis() as u64;
        loop {
            let released = turn.released();
            let mut invocation = self.scripts.acquire.prepare_invoke();
            invocation
                .key(self.keys.lock(user_id))
                .key(self.keys.fence(user_id))
                .arg(&owner)
                .arg(lease_ms);
            let answer: i64 = bounded(self.timeout, invocation.invoke_async(conn)).await?;
            if answer > 0 {
                drop(released);
                let lost = Arc::new(AtomicBool::new(false));
                let renewal = self
                    .renew
                    .then(|| self.spawn_renewal(user_id.clone(), owner.clone(), lost.clone()));
                return Ok(LockGuard {
                    user_id: user_id.clone(),
                    owner,
                    fence: answer as u64,
                    lost,
                    renewal,
                    _turn: turn,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LockError::Timeout);
            }
            let remaining_lease = Duration::from_millis(answer.unsigned_abs());
            let nap = jitter(remaining_lease.min(self.settings.poll_interval)).min(deadline - now);
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Gives the lock back and wakes the next waiter. Returns false when the lease had
    /// already passed to someone else.
    pub async fn release<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        guard: LockGuard,
    ) -> Result<bool, RedisFault> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.keys.lock(&guard.user_id))
            .arg(&guard.owner)
            .arg(self.keys.release_channel())
            .arg(guard.user_id.as_str());
        let released: i64 = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        Ok(released == 1)
    }

    /// Moves the wallet's fencing counter past `seen_by_database` and gives `guard` a
    /// token above it. Returns false when the guard no longer owns the lock.
    pub async fn refence<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        guard: &mut LockGuard,
        seen_by_database: u64,
    ) -> Result<bool, RedisFault> {
        let mut invocation = self.scripts.refence.prepare_invoke();
        invocation
            .key(self.keys.lock(&guard.user_id))
            .key(self.keys.fence(&guard.user_id))
            .arg(&guard.owner)
            .arg(seen_by_database);
        let fence: u64 = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        if fence == 0 {
            return Ok(false);
        }
        guard.fence = fence;
        Ok(true)
    }

    /// Renews the lease every third of its length until aborted; on the first failure
    /// marks the guard lost and stops.
    fn spawn_renewal(
        &self,
        user_id: Identifier,
        owner: String,
        lost: Arc<AtomicBool>,
    ) -> AbortHandle {
        let pool = self.pool.clone();
        let script = self.scripts.clone();
        let key = self.keys.lock(&user_id);
        let lease = self.settings.lease;
        let timeout = self.timeout;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = async {
                    let mut conn = bounded(timeout, pool.get()).await?;
                    let mut invocation = script.extend.prepare_invoke();
                    invocation
                        .key(&key)
                        .arg(&owner)
                        .arg(lease.as_millis() as u64);
                    bounded(timeout, invocation.invoke_async::<i64>(&mut conn)).await
                }
                .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(user_id = %user_id, ?renewed, "lock lease could not be renewed");
                    lost.store(true, Ordering::Release);
                    return;
                }
            }
        });
        task.abort_handle()
    }
}

/// A random duration between half and all of `d`, so waiters do not poll in step.
fn jitter(d: Duration) -> Duration {
    let millis = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}
