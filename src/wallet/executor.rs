//! Runs one [`Command`] in a transaction of its own: under the Redis lock, or under
//! MySQL row locks alone while Redis is unavailable ([`crate::fallback`]).
//!
//! Either way the transaction first locks the wallet row (`SELECT … FOR UPDATE`), so
//! the database serialises writers even when two instances disagree about Redis. On the
//! Redis path the row lock is uncontended, the lock queue lives in Redis, and a stale
//! holder is refused by the fencing token.

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::attempt::{retrying, Attempts, Failure, MAX_ATTEMPTS};
use super::commands::{Applied, Command, TxContext};
use super::replay::{self, Claimed};
use super::{Outcome, ServiceError, WalletService};
use crate::configuration::LockMode;
use crate::fallback::ActiveMode;
use crate::idempotency::Settlement;
use crate::lock::{LockError, LockGuard};
use crate::redis_support::RedisFault;
use crate::store;
use crate::telemetry::metrics;

impl WalletService {
    pub(super) async fn execute<C: Command>(
        &self,
        cmd: &C,
    ) -> Result<Outcome<C::Output>, ServiceError> {
        // The whole request's budget: past it nothing commits.
        let deadline = Instant::now() + self.request_timeout;
        if self.breaker.mode() == ActiveMode::Redis {
            match self.execute_on_redis(cmd, deadline).await {
                // Redis failed before anything was committed.
                Err(ServiceError::Redis(fault)) => {
                    self.redis_failed(&fault);
                    if self.breaker.configured() != LockMode::Auto {
                        return Err(ServiceError::Redis(fault));
                    }
                    tracing::warn!(error = %fault, "redis failed before commit; finishing on the mysql path");
                }
                answer => return answer,
            }
        }
        self.execute_on_mysql(cmd, deadline).await
    }

    /// Claim the idempotency key, take the lock, transact, release, cache the reply.
    async fn execute_on_redis<C: Command>(
        &self,
        cmd: &C,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, ServiceError> {
        let mut conn = self.redis.connection().await?;
        let fingerprint = cmd.fingerprint();
        let claim = self
            .idempotency
            .claim(&mut conn, cmd.scope(), cmd.key(), &fingerprint)
            .await?;
        self.breaker.record_success();
        let token = match replay::claimed(cmd.scope(), claim, |reply| serde_json::from_str(reply)) {
            Claimed::Ours(token) => token,
            Claimed::Answered(answer) => return answer,
        };

        let result = self.locked(&mut conn, cmd, deadline).await;
        let cache = match &result {
            Ok(outcome) => match serde_json::to_string(&outcome.value) {
                Ok(reply) => {
                    let how = Settlement::Done {
                        fingerprint: &fingerprint,
                        reply: &reply,
                    };
                    self.idempotency
                        .settle(&mut conn, cmd.scope(), cmd.key(), &token, how)
                        .await
                }
                Err(e) => Err(RedisFault::Command(redis::RedisError::from(
                    std::io::Error::other(e),
                ))),
            },
            // The claim expires on its own.
            Err(ServiceError::Redis(_)) => Ok(()),
            // Nothing was applied: free the key for an immediate retry.
            Err(_) => {
                self.idempotency
                    .settle(
                        &mut conn,
                        cmd.scope(),
                        cmd.key(),
                        &token,
                        Settlement::Abandon,
                    )
                    .await
            }
        };
        if let Err(fault) = cache {
            // The answer stands: the database replays it if the cache missed it.
            tracing::warn!(error = %fault, "could not update the idempotency cache");
            self.redis_failed(&fault);
        }
        result
    }

    /// Takes the wallet's lock, runs the transaction under it (retried as
    /// [`retrying`] allows), and releases it. A lost lease queues for the lock again,
    /// at most [`MAX_ATTEMPTS`] times in all.
    async fn locked<C: Command>(
        &self,
        conn: &mut MultiplexedConnection,
        cmd: &C,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, ServiceError> {
        let lock_deadline = (Instant::now() + self.lock_wait).min(deadline);
        let mut leases = 1;
        loop {
            let guard = match self.lock.acquire(conn, cmd.user_id(), lock_deadline).await {
                Ok(guard) => guard,
                Err(LockError::Timeout) if Instant::now() >= deadline => {
                    return Err(ServiceError::Timeout)
                }
                Err(LockError::Timeout) => return Err(ServiceError::LockTimeout),
                Err(LockError::Redis(fault)) => return Err(fault.into()),
            };
            let mut locked = Locked {
                service: self,
                cmd,
                deadline,
                guard,
                conn: &mut *conn,
            };
            let result = retrying(&mut locked).await;
            let guard = locked.guard;
            self.release(conn, guard).await;
            match result {
                Err(Failure::LeaseLost) if leases < MAX_ATTEMPTS => {
                    leases += 1;
                    metrics::lease_lost();
                    tracing::info!("lock lease lost before commit; taking the lock again");
                }
                result => return result.map_err(Failure::into_service_error),
            }
        }
    }

    async fn release(&self, conn: &mut MultiplexedConnection, guard: LockGuard) {
        match self.lock.release(conn, guard).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("lock lease had expired before release"),
            Err(fault) => {
                // The lease runs out by itself; count it against Redis all the same.
                tracing::warn!(error = %fault, "could not release the wallet lock");
                self.redis_failed(&fault);
            }
        }
    }

    /// The fallback: row locks and unique keys only.
    async fn execute_on_mysql<C: Command>(
        &self,
        cmd: &C,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, ServiceError> {
        metrics::mysql_fallback();
        let mut unlocked = Unlocked {
            service: self,
            cmd,
            deadline,
        };
        retrying(&mut unlocked)
            .await
            .map_err(Failure::into_service_error)
    }

    /// One transaction, measured.
    async fn transact<C: Command>(
        &self,
        cmd: &C,
        guard: Option<&LockGuard>,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, Failure> {
        let started = Instant::now();
        let result = self.transact_once(cmd, guard, deadline).await;
        metrics::transaction(cmd.scope(), started.elapsed());
        result
    }

    /// One transaction: lock the wallet row, check the fence, apply, commit, unless
    /// the lease was lost or the request's `deadline` passed.
    async fn transact_once<C: Command>(
        &self,
        cmd: &C,
        guard: Option<&LockGuard>,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, Failure> {
        let mut tx = self.db.begin().await?;
        let wallet = store::wallets::lock(&mut tx, cmd.user_id().as_str())
            .await?
            .ok_or(ServiceError::WalletNotFound)?;
        let fence = guard.map(LockGuard::fence);
        if let Some(fence) = fence {
            if wallet.fence_token > fence {
                tx.rollback().await?;
                return Err(Failure::Stale {
                    user_id: wallet.user_id,
                    seen: wallet.fence_token,
                });
            }
        }
        let ctx = TxContext {
            fence,
            now: crate::support::clock::now(),
            currency: self.currency,
            points_rate: self.points_rate,
        };
        let applied = match cmd.apply(&mut tx, &wallet, &ctx).await {
            Ok(applied) => applied,
            Err(failure) => {
                // Best effort: a connection that failed rolls back as it closes.
                let _ = tx.rollback().await;
                return Err(failure);
            }
        };
        let value = match applied {
            Applied::Written(value) => value,
            Applied::Replay(value) => {
                tx.rollback().await?;
                return Ok(replay::recorded(cmd.scope(), true, || value)?);
            }
            Applied::Recorded => {
                tx.rollback().await?;
                return Ok(cmd.recorded(&self.db, self.currency).await?);
            }
        };
        if guard.is_some_and(LockGuard::is_lost) {
            tx.rollback().await?;
            return Err(Failure::LeaseLost);
        }
        if Instant::now() >= deadline {
            tx.rollback().await?;
            return Err(ServiceError::Timeout.into());
        }
        tx.commit().await?;
        self.outbox_wake.notify_one();
        Ok(Outcome {
            value,
            replayed: false,
        })
    }
}

/// One request's transaction under its wallet's Redis lock.
struct Locked<'a, C> {
    service: &'a WalletService,
    cmd: &'a C,
    deadline: Instant,
    guard: LockGuard,
    conn: &'a mut MultiplexedConnection,
}

impl<C: Command> Attempts for Locked<'_, C> {
    type Output = Outcome<C::Output>;

    async fn attempt(&mut self) -> Result<Self::Output, Failure> {
        self.service
            .transact(self.cmd, Some(&self.guard), self.deadline)
            .await
    }

    /// Redis lost its counter and came back with a clock behind the one that issued the
    /// row's token: go on with a fresh token, unless our lease passed to someone else.
    async fn refence(&mut self, _: &str, seen: u64) -> Result<(), Failure> {
        let lock = &self.service.lock;
        match lock.refence(self.conn, &mut self.guard, seen).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::LeaseLost),
            Err(fault) => Err(Failure::Failed(fault.into())),
        }
    }
}

/// One request's transaction on the fallback path: row locks and unique keys only.
struct Unlocked<'a, C> {
    service: &'a WalletService,
    cmd: &'a C,
    deadline: Instant,
}

impl<C: Command> Attempts for Unlocked<'_, C> {
    type Output = Outcome<C::Output>;

    async fn attempt(&mut self) -> Result<Self::Output, Failure> {
        self.service.transact(self.cmd, None, self.deadline).await
    }

    /// Without a fencing token no transaction is stale.
    async fn refence(&mut self, _: &str, _: u64) -> Result<(), Failure> {
        Ok(())
    }
}
