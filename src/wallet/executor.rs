//! Runs a [`Command`] under the Redis lock, or under MySQL row locks alone while Redis is
//! unavailable.
//!
//! Either way the transaction first locks the wallet row (`SELECT … FOR UPDATE`), so
//! the database serialises writers even when two instances disagree about Redis. On the
//! Redis path the row lock is uncontended, the lock queue lives in Redis, and a stale
//! holder is refused by the fencing token.

use std::time::Duration;

use tokio::time::Instant;

use super::commands::{Applied, Command, CommandError, TxContext};
use super::{unavailable, Outcome, ServiceError, WalletService};
use crate::configuration::LockMode;
use crate::fallback::ActiveMode;
use crate::idempotency::{Claim, Settlement};
use crate::lock::{LockError, LockGuard};
use crate::redis_support::RedisFault;
use crate::store;
use crate::telemetry::metrics;

/// How often one request retries a transaction that lost a race it could not see
/// (a stale fencing token, a lost lease, a deadlock) before it answers 503.
const MAX_ATTEMPTS: u32 = 3;

/// Why the Redis path stopped.
enum RedisPath {
    /// A business answer: return it.
    Failed(ServiceError),
    /// Redis failed before anything was committed: take the MySQL path instead.
    Redis(RedisFault),
}

/// Why one transaction did not commit.
enum TxFailure {
    Failed(ServiceError),
    /// The wallet was written under a newer fencing token than ours.
    Stale {
        seen: u64,
    },
    /// Our lease could not be renewed: we may no longer own the lock.
    LeaseLost,
    /// A deadlock or a conditional update that lost a race: safe to retry.
    Retry(anyhow::Error),
}

impl From<sqlx::Error> for TxFailure {
    fn from(e: sqlx::Error) -> Self {
        if store::is_lock_conflict(&e) {
            Self::Retry(e.into())
        } else {
            Self::Failed(unavailable(e))
        }
    }
}

impl From<ServiceError> for TxFailure {
    fn from(e: ServiceError) -> Self {
        Self::Failed(e)
    }
}

impl TxFailure {
    /// The answer when no retry is left.
    fn into_service_error(self) -> ServiceError {
        match self {
            Self::Failed(e) => e,
            Self::Stale { .. } | Self::LeaseLost => ServiceError::LockTimeout,
            Self::Retry(e) => ServiceError::Unavailable(e.context("retries exhausted")),
        }
    }
}

impl WalletService {
    pub(super) async fn execute<C: Command>(
        &self,
        cmd: &C,
    ) -> Result<Outcome<C::Output>, ServiceError> {
        // The whole request's budget: past it nothing commits.
        let deadline = Instant::now() + self.request_timeout;
        if self.breaker.mode() == ActiveMode::Redis {
            match self.execute_on_redis(cmd, deadline).await {
                Ok(outcome) => return Ok(outcome),
                Err(RedisPath::Failed(e)) => return Err(e),
                Err(RedisPath::Redis(fault)) => {
                    self.redis.reset();
                    self.breaker.record_failure(&fault);
                    if self.breaker.configured() != LockMode::Auto {
                        return Err(unavailable(fault));
                    }
                    tracing::warn!(error = %fault, "redis failed before commit; finishing on the mysql path");
                }
            }
        }
        self.execute_on_mysql(cmd, deadline).await
    }

    /// Claim the idempotency key, take the lock, transact, release, cache the reply.
    async fn execute_on_redis<C: Command>(
        &self,
        cmd: &C,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, RedisPath> {
        let mut conn = self.redis.connection().await.map_err(RedisPath::Redis)?;
        let fingerprint = cmd.fingerprint();
        let claim = self
            .idempotency
            .claim(&mut conn, C::SCOPE, cmd.key(), &fingerprint)
            .await
            .map_err(RedisPath::Redis)?;
        self.breaker.record_success();
        let token = match claim {
            Claim::Claimed(token) => token,
            Claim::Done(reply) => {
                metrics::replayed(C::SCOPE);
                return serde_json::from_str(&reply)
                    .map(|value| Outcome {
                        value,
                        replayed: true,
                    })
                    .map_err(|e| RedisPath::Failed(unavailable(e)));
            }
            Claim::Pending(_) => {
                metrics::in_progress(C::SCOPE);
                return Err(RedisPath::Failed(ServiceError::InProgress {
                    retry_after: Duration::from_secs(1),
                }));
            }
            Claim::Mismatch => {
                metrics::key_reused(C::SCOPE);
                return Err(RedisPath::Failed(ServiceError::KeyReused));
            }
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
                        .settle(&mut conn, C::SCOPE, cmd.key(), &token, how)
                        .await
                }
                Err(e) => Err(RedisFault::Command(redis::RedisError::from(
                    std::io::Error::other(e),
                ))),
            },
            // Nothing was applied: free the key for an immediate retry.
            Err(RedisPath::Failed(_)) => {
                self.idempotency
                    .settle(&mut conn, C::SCOPE, cmd.key(), &token, Settlement::Abandon)
                    .await
            }
            // The claim expires on its own.
            Err(RedisPath::Redis(_)) => Ok(()),
        };
        if let Err(fault) = cache {
            // The answer stands: the database replays it if the cache missed it.
            tracing::warn!(error = %fault, "could not update the idempotency cache");
            self.redis.reset();
            self.breaker.record_failure(&fault);
        }
        result
    }

    async fn locked<C: Command>(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        cmd: &C,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, RedisPath> {
        let lock_deadline = (Instant::now() + self.lock_wait).min(deadline);
        let mut attempt = 1;
        loop {
            let mut guard = match self.lock.acquire(conn, cmd.user_id(), lock_deadline).await {
                Ok(guard) => guard,
                Err(LockError::Timeout) if Instant::now() >= deadline => {
                    return Err(RedisPath::Failed(ServiceError::Timeout))
                }
                Err(LockError::Timeout) => {
                    return Err(RedisPath::Failed(ServiceError::LockTimeout))
                }
                Err(LockError::Redis(fault)) => return Err(RedisPath::Redis(fault)),
            };
            // Retries under the same lock, while the fencing token can be moved forward.
            let failure = loop {
                match self.transact(cmd, Some(&guard), deadline).await {
                    Err(TxFailure::Stale { seen }) if attempt < MAX_ATTEMPTS => {
                        attempt += 1;
                        metrics::stale_fence();
                        match self.lock.refence(conn, &mut guard, seen).await {
                            // Redis lost its counter and came back with a clock behind the
                            // one that issued the row's token: go on with a fresh token.
                            Ok(true) => continue,
                            // Our lease passed to someone else: queue again.
                            Ok(false) => break TxFailure::LeaseLost,
                            Err(fault) => return Err(RedisPath::Redis(fault)),
                        }
                    }
                    Err(TxFailure::Retry(e)) if attempt < MAX_ATTEMPTS => {
                        attempt += 1;
                        tracing::debug!(error = %e, "retrying the transaction");
                        continue;
                    }
                    Err(TxFailure::LeaseLost) if attempt < MAX_ATTEMPTS => {
                        metrics::lease_lost();
                        break TxFailure::LeaseLost;
                    }
                    result => {
                        self.release(conn, guard).await?;
                        return result.map_err(|f| RedisPath::Failed(f.into_service_error()));
                    }
                }
            };
            self.release(conn, guard).await?;
            if attempt >= MAX_ATTEMPTS {
                return Err(RedisPath::Failed(failure.into_service_error()));
            }
            attempt += 1;
            tracing::info!("lock lease lost before commit; taking the lock again");
        }
    }

    async fn release(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        guard: LockGuard,
    ) -> Result<(), RedisPath> {
        match self.lock.release(conn, guard).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!("lock lease had expired before release");
                Ok(())
            }
            Err(fault) => {
                // The lease runs out by itself; count it against Redis all the same.
                tracing::warn!(error = %fault, "could not release the wallet lock");
                self.redis.reset();
                self.breaker.record_failure(&fault);
                Ok(())
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
        let mut attempt = 1;
        loop {
            match self.transact(cmd, None, deadline).await {
                Err(TxFailure::Retry(e)) if attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(error = %e, "retrying the transaction");
                }
                result => return result.map_err(TxFailure::into_service_error),
            }
        }
    }

    /// One transaction, measured.
    async fn transact<C: Command>(
        &self,
        cmd: &C,
        guard: Option<&LockGuard>,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, TxFailure> {
        let started = Instant::now();
        let result = self.transact_once(cmd, guard, deadline).await;
        metrics::transaction(C::SCOPE, started.elapsed());
        match &result {
            Ok(outcome) if outcome.replayed => metrics::replayed(C::SCOPE),
            Err(TxFailure::Failed(ServiceError::KeyReused)) => metrics::key_reused(C::SCOPE),
            _ => {}
        }
        result
    }

    /// One transaction: lock the wallet row, check the fence, apply, commit, unless
    /// the lease was lost or the request's `deadline` passed.
    async fn transact_once<C: Command>(
        &self,
        cmd: &C,
        guard: Option<&LockGuard>,
        deadline: Instant,
    ) -> Result<Outcome<C::Output>, TxFailure> {
        let mut tx = self.db.begin().await?;
        let wallet = store::wallets::lock(&mut tx, cmd.user_id().as_str())
            .await?
            .ok_or(ServiceError::WalletNotFound)?;
        let fence = guard.map(LockGuard::fence);
        if let Some(fence) = fence {
            if wallet.fence_token > fence {
                tx.rollback().await?;
                return Err(TxFailure::Stale {
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
        let applied = cmd.apply(&mut tx, &wallet, &ctx).await;
        match applied {
            Ok(Applied::Written(value)) => {
                if guard.is_some_and(LockGuard::is_lost) {
                    tx.rollback().await?;
                    return Err(TxFailure::LeaseLost);
                }
                if Instant::now() >= deadline {
                    tx.rollback().await?;
                    return Err(TxFailure::Failed(ServiceError::Timeout));
                }
                tx.commit().await?;
                self.outbox_wake.notify_one();
                Ok(Outcome {
                    value,
                    replayed: false,
                })
            }
            Ok(Applied::AlreadyDone(value)) => {
                tx.rollback().await?;
                Ok(Outcome {
                    value,
                    replayed: true,
                })
            }
            Err(CommandError::Duplicate) => {
                tx.rollback().await?;
                let value = cmd.recorded(&self.db, self.currency).await?;
                Ok(Outcome {
                    value,
                    replayed: true,
                })
            }
            Err(CommandError::Conflict) => {
                tx.rollback().await?;
                Err(TxFailure::Retry(anyhow::anyhow!(
                    "conditional update matched no row"
                )))
            }
            Err(CommandError::Service(e)) => {
                tx.rollback().await?;
                Err(TxFailure::Failed(e))
            }
            Err(CommandError::Database(e)) => {
                // Dropping `tx` rolls back.
                Err(e.into())
            }
        }
    }
}
