//! The per-wallet Redis lock: Lua scripts in `lua/lock_*.lua`, a fencing token per
//! acquisition, a lease renewed while held, and waiters woken by pub/sub.
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
//! (`lua/lock_acquire.lua`): before each increment it is raised to the time in
//! microseconds since the epoch, and a token issued at Redis time `t` is `t + 1`, a few
//! more if several fall in one microsecond. The first token issued after a loss, at time
//! `t'`, is at least `t' + 1`, above every token issued before it, provided Redis's clock
//! read later at `t'` than at the last token before the loss, by more than the counter
//! ran ahead of the clock then. A restart takes far longer than a microsecond, so the
//! condition fails only if the clock was stepped back across it, or if a failover lands
//! on a machine whose clock is behind by more than the outage lasted. The counter runs
//! ahead of the clock only after a jump (below): by [`REFENCE_MARGIN`] plus however far
//! the clock was behind, until the clock catches up.
//!
//! If the clock did go back, the database notices at the first write: its row holds a
//! token above the new one. [`WalletLock::refence`] then moves the counter
//! [`REFENCE_MARGIN`] past the row's token (or the clock, if that is further), so holders
//! from before the loss stay below as long as they got their token less than that
//! margin after the one the row holds. The database's maximum alone would not do: a
//! wallet the database has never fenced holds 0, and acquisitions that wrote nothing (a
//! refused payment, a replay) leave tokens above the row's.

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
use crate::redis_support::{bounded, KeySpace, RedisFault, SharedRedis};
use crate::telemetry::metrics;
use slots::{Baton, LocalTurn, Slots};

/// How many local holders in a row one Redis acquisition may serve. Bounds how long one
/// instance keeps a hot wallet while another instance waits for it.
const MAX_PASSES: u32 = 16;

/// How long one Redis acquisition may be passed on locally, whatever the count.
const MAX_HOLD: Duration = Duration::from_millis(100);

/// How far past the database's token [`WalletLock::refence`] moves a counter found
/// behind it, in the clock's time (tokens are microseconds). It must cover the tokens
/// handed out after the database's last write of the wallet and before Redis lost its
/// data. An hour is far more than a request lives; larger would keep the counter ahead
/// of the clock for longer, and a second loss in that time could repeat tokens.
pub const REFENCE_MARGIN: Duration = Duration::from_secs(3_600);

/// After a release another instance was waiting for, how long this instance's next
/// holder stands back: enough for the pub/sub message and the other's acquire.
pub const YIELD: Duration = Duration::from_millis(3);

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
    held_since: Instant,
    passes: u32,
    turn: Option<LocalTurn>,
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

/// The Redis locks one batch holds, under one owner token. Give them back with
/// [`WalletLock::release_batch`]; dropped, they run out with their lease.
pub struct BatchLocks {
    owner: String,
    /// When the leases were last set: taken or renewed.
    taken_at: Instant,
    /// The wallets held and their fencing tokens.
    fences: Vec<(Identifier, u64)>,
}

impl BatchLocks {
    /// The fencing token of `user_id`'s lock, if the batch holds it.
    pub fn fence(&self, user_id: &str) -> Option<u64> {
        self.fences
            .iter()
            .find(|(id, _)| id.as_str() == user_id)
            .map(|(_, fence)| *fence)
    }
}

/// The lock service; cheap to clone.
#[derive(Clone)]
pub struct WalletLock {
    redis: SharedRedis,
    keys: KeySpace,
    settings: LockSettings,
    timeout: Duration,
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
    /// Builds the lock, and the background work it needs ([`LockUpkeep`]), which the
    /// application runs as a task of its own.
    pub fn new(
        redis: SharedRedis,
        client: redis::Client,
        keys: KeySpace,
        settings: LockSettings,
        timeout: Duration,
    ) -> (Self, LockUpkeep) {
        let (orphans, orphaned) = tokio::sync::mpsc::unbounded_channel();
        let lock = Self {
            redis,
            keys,
            settings,
            timeout,
            slots: Arc::new(Slots::new(orphans)),
            scripts: Arc::new(Scripts {
                acquire: Script::new(include_str!("../../lua/lock_acquire.lua")),
                release: Script::new(include_str!("../../lua/lock_release.lua")),
                extend: Script::new(include_str!("../../lua/lock_extend.lua")),
                refence: Script::new(include_str!("../../lua/lock_refence.lua")),
            }),
        };
        let upkeep = LockUpkeep {
            lock: lock.clone(),
            client,
            orphaned,
        };
        (lock, upkeep)
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
        let started = Instant::now();
        let turn = match self.slots.enter(user_id, deadline).await {
            Some(turn) => turn,
            None => {
                metrics::lock_acquired("timeout", started.elapsed());
                return Err(LockError::Timeout);
            }
        };
        if let Some(mut baton) = turn.take_baton() {
            if !baton.lost.load(Ordering::Acquire) {
                metrics::lock_acquired("passed", started.elapsed());
                return Ok(LockGuard {
                    user_id: user_id.clone(),
                    owner: std::mem::take(&mut baton.owner),
                    fence: baton.fence,
                    lost: baton.lost.clone(),
                    renewal: baton.renewal.take(),
                    held_since: baton.held_since,
                    passes: baton.passes + 1,
                    turn: Some(turn),
                });
            }
            self.drop_baton(user_id, baton).await;
        }
        if let Some(until) = turn.take_yield() {
            tokio::time::sleep_until(until.min(deadline)).await;
        }
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let lease_ms = self.settings.lease.as_millis() as u64;
        loop {
            let released = turn.released();
            let mut invocation = self.scripts.acquire.prepare_invoke();
            invocation
                .key(self.keys.lock(user_id))
                .key(self.keys.fence(user_id))
                .key(self.keys.contended(user_id))
                .arg(&owner)
                .arg(lease_ms);
            let answer =
                match bounded(self.timeout, invocation.invoke_async::<Vec<i64>>(conn)).await {
                    Ok(answers) => answers.first().copied().unwrap_or(1),
                    Err(fault) => {
                        metrics::lock_acquired("error", started.elapsed());
                        return Err(fault.into());
                    }
                };
            if answer > 0 {
                metrics::lock_acquired("acquired", started.elapsed());
                drop(released);
                let lost = Arc::new(AtomicBool::new(false));
                let renewal =
                    Some(self.spawn_renewal(user_id.clone(), owner.clone(), lost.clone()));
                return Ok(LockGuard {
                    user_id: user_id.clone(),
                    owner,
                    fence: answer as u64,
                    lost,
                    renewal,
                    held_since: Instant::now(),
                    passes: 0,
                    turn: Some(turn),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::lock_acquired("timeout", started.elapsed());
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
    ///
    /// When requests of this process queue for the same wallet, the lock is passed to
    /// the next of them instead (at most [`MAX_PASSES`] times and [`MAX_HOLD`] long):
    /// same lease, same fencing token, no Redis round trip. The local queue keeps those
    /// holders apart, so sharing the token is safe.
    pub async fn release<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        mut guard: LockGuard,
    ) -> Result<bool, RedisFault> {
        let turn = guard
            .turn
            .take()
            .expect("a guard holds its turn until released");
        if !guard.is_lost()
            && guard.passes < MAX_PASSES
            && guard.held_since.elapsed() < MAX_HOLD
            && turn.has_waiters()
        {
            turn.pass_baton(Baton {
                owner: std::mem::take(&mut guard.owner),
                fence: guard.fence,
                lost: guard.lost.clone(),
                renewal: guard.renewal.take(),
                held_since: guard.held_since,
                passes: guard.passes,
            });
            return Ok(true);
        }
        let released = self
            .release_in_redis(conn, &guard.user_id, &guard.owner)
            .await?;
        if released == 2 && turn.has_waiters() {
            // Another instance waits: let it have the next turn.
            turn.set_yield(Instant::now() + YIELD);
        }
        Ok(released > 0)
    }

    /// Runs the release script: 0 not the owner, 1 released, 2 released and announced
    /// to waiters.
    async fn release_in_redis<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        user_id: &Identifier,
        owner: &str,
    ) -> Result<i64, RedisFault> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.keys.lock(user_id))
            .key(self.keys.contended(user_id))
            .arg(owner)
            .arg(self.keys.release_channel())
            .arg(user_id.as_str());
        let answers: Vec<i64> = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        Ok(answers.first().copied().unwrap_or(0))
    }

    /// Releases a baton nobody took (its successors gave up, or its lease was lost).
    async fn drop_baton(&self, user_id: &Identifier, baton: Baton) {
        let owner = baton.owner.clone();
        // Stops the renewal first: if the release fails, the lease runs out.
        drop(baton);
        let released = async {
            let mut conn = self.redis.connection().await?;
            self.release_in_redis(&mut conn, user_id, &owner).await
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(%user_id, error = %e, "could not release a passed-on lock; its lease will expire");
        }
    }

    /// Moves the wallet's fencing counter [`REFENCE_MARGIN`] past `seen_by_database`
    /// (Redis lost the counter and its clock is behind the one that issued the
    /// database's token) and gives `guard` a token above it. Returns false when the
    /// guard no longer owns the lock.
    pub async fn refence<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        guard: &mut LockGuard,
        seen_by_database: u64,
    ) -> Result<bool, RedisFault> {
        match self
            .refence_owned(conn, &guard.user_id, &guard.owner, seen_by_database)
            .await?
        {
            Some(fence) => {
                guard.fence = fence;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Self::refence`] for the lock `owner` holds on `user_id`: the new token, or
    /// `None` when `owner` no longer holds it.
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

    /// Tries to take the locks of a batch's wallets, all in one round trip and under one
    /// owner token. A wallet held elsewhere is left out (with how long its lease still
    /// runs) and never holds up the others.
    pub async fn acquire_batch<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        wallets: &[Identifier],
    ) -> Result<(BatchLocks, Vec<(Identifier, Duration)>), RedisFault> {
        let started = Instant::now();
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let mut invocation = self.scripts.acquire.prepare_invoke();
        invocation
            .arg(&owner)
            .arg(self.settings.lease.as_millis() as u64);
        for user_id in wallets {
            invocation
                .key(self.keys.lock(user_id))
                .key(self.keys.fence(user_id))
                .key(self.keys.contended(user_id));
        }
        let answers: Vec<i64> = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        let mut locks = BatchLocks {
            owner,
            taken_at: started,
            fences: Vec::with_capacity(wallets.len()),
        };
        let mut refused = Vec::new();
        for (user_id, answer) in wallets.iter().zip(answers) {
            if answer > 0 {
                metrics::lock_acquired("acquired", started.elapsed());
                locks.fences.push((user_id.clone(), answer as u64));
            } else {
                metrics::lock_acquired("busy", started.elapsed());
                refused.push((
                    user_id.clone(),
                    Duration::from_millis(answer.unsigned_abs()),
                ));
            }
        }
        Ok((locks, refused))
    }

    /// Renews every lease of a batch in one round trip, once a third of the lease has
    /// passed since they were set. Returns false when one was lost: the batch must not
    /// commit.
    pub async fn renew_batch<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        locks: &mut BatchLocks,
    ) -> Result<bool, RedisFault> {
        if locks.fences.is_empty() || locks.taken_at.elapsed() < self.settings.lease / 3 {
            return Ok(true);
        }
        let renewed_at = Instant::now();
        let mut invocation = self.scripts.extend.prepare_invoke();
        invocation
            .arg(&locks.owner)
            .arg(self.settings.lease.as_millis() as u64);
        for (user_id, _) in &locks.fences {
            invocation.key(self.keys.lock(user_id));
        }
        let renewed: usize = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        locks.taken_at = renewed_at;
        Ok(renewed == locks.fences.len())
    }

    /// Moves one wallet's token of a batch past `seen_by_database` (see
    /// [`Self::refence`]). Returns false when the batch no longer owns that lock.
    pub async fn refence_batch<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        locks: &mut BatchLocks,
        user_id: &str,
        seen_by_database: u64,
    ) -> Result<bool, RedisFault> {
        let Some(slot) = locks
            .fences
            .iter_mut()
            .find(|(id, _)| id.as_str() == user_id)
        else {
            return Ok(false);
        };
        match self
            .refence_owned(conn, &slot.0, &locks.owner, seen_by_database)
            .await?
        {
            Some(fence) => {
                slot.1 = fence;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Releases every lock of a batch in one round trip. Returns the wallets another
    /// process was waiting for.
    pub async fn release_batch<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        locks: BatchLocks,
    ) -> Result<Vec<Identifier>, RedisFault> {
        if locks.fences.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .arg(&locks.owner)
            .arg(self.keys.release_channel());
        for (user_id, _) in &locks.fences {
            invocation
                .key(self.keys.lock(user_id))
                .key(self.keys.contended(user_id))
                .arg(user_id.as_str());
        }
        let answers: Vec<i64> = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        let lost = answers.iter().filter(|&&answer| answer == 0).count();
        if lost > 0 {
            tracing::warn!(lost, "batch lock leases had expired before release");
        }
        Ok(locks
            .fences
            .into_iter()
            .zip(answers)
            .filter(|(_, answer)| *answer == 2)
            .map(|((user_id, _), _)| user_id)
            .collect())
    }

    /// How many releases have been announced on the channel so far, for any wallet.
    pub fn release_count(&self) -> u64 {
        self.slots.releases.load(Ordering::Acquire)
    }

    /// Resolves at the next lock release announced on the channel, for any wallet.
    pub fn any_release(&self) -> tokio::sync::futures::Notified<'_> {
        self.slots.any_release.notified()
    }

    /// Renews the lease every third of its length until aborted; on the first failure
    /// marks the guard lost and stops.
    fn spawn_renewal(
        &self,
        user_id: Identifier,
        owner: String,
        lost: Arc<AtomicBool>,
    ) -> AbortHandle {
        let redis = self.redis.clone();
        let script = self.scripts.clone();
        let key = self.keys.lock(&user_id);
        let lease = self.settings.lease;
        let timeout = self.timeout;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = async {
                    let mut conn = redis.connection().await?;
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

/// The lock's background work, two tasks the application runs until it stops
/// ([`LockUpkeep::tasks`]): the pub/sub listener that wakes waiters when a holder
/// announces a release (one connection per process), and the releaser of locks handed
/// to a local waiter that had given up.
pub struct LockUpkeep {
    lock: WalletLock,
    client: redis::Client,
    orphaned: tokio::sync::mpsc::UnboundedReceiver<(Identifier, Baton)>,
}

impl LockUpkeep {
    /// The listener and the releaser. Two tasks, not one: a flood of release
    /// announcements keeps the listener busy, and must not hold back a release.
    pub fn tasks(
        self,
    ) -> (
        impl std::future::Future<Output = ()> + Send + 'static,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let Self {
            lock,
            client,
            mut orphaned,
        } = self;
        let listen = Slots::listen(
            Arc::downgrade(&lock.slots),
            client,
            lock.keys.release_channel(),
        );
        let release_orphans = async move {
            while let Some((user_id, baton)) = orphaned.recv().await {
                lock.drop_baton(&user_id, baton).await;
            }
        };
        (listen, release_orphans)
    }
}

/// A random duration between half and all of `d`, so waiters do not poll in step.
pub fn jitter(d: Duration) -> Duration {
    let millis = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}
