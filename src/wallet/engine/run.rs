//! One batch from claim to answer: on the Redis path (claims, locks, transaction,
//! cached replies, release) or, while Redis is unavailable, on row locks alone.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::time::Instant;

use super::transaction::Held;
use super::{Finished, Job};
use crate::breaker::ActiveMode;
use crate::configuration::LockMode;
use crate::domain::Identifier;
use crate::idempotency::{Claim, ClaimRequest, Settle, Settlement};
use crate::lock::Begun;
use crate::redis_support::RedisFault;
use crate::telemetry::metrics;
use crate::wallet::attempt::{retrying, Attempts, Failure, MAX_ATTEMPTS};
use crate::wallet::{unavailable, ServiceError, WalletCore};

/// Runs one batch; returns what must wait for a later one.
pub(super) async fn run(core: Arc<WalletCore>, jobs: Vec<Job>) -> Finished {
    Batch { core: &core }.run(jobs).await
}

/// Answers jobs that waited for their wallet longer than the lock wait.
pub(super) async fn expire(core: Arc<WalletCore>, jobs: Vec<Job>) {
    Batch { core: &core }.expire(jobs).await
}

/// One batch's run, on the shared pools and lock.
pub(super) struct Batch<'a> {
    pub core: &'a WalletCore,
}

impl std::ops::Deref for Batch<'_> {
    type Target = WalletCore;

    fn deref(&self) -> &WalletCore {
        self.core
    }
}

impl Batch<'_> {
    async fn run(&self, mut jobs: Vec<Job>) -> Finished {
        let mut finished = Finished::default();
        jobs.iter_mut().for_each(|job| job.requeue = false);
        let mut jobs = if self.breaker.mode() == ActiveMode::Redis {
            match self.run_on_redis(jobs, &mut finished).await {
                Ok(()) => return finished,
                Err((fault, jobs)) => {
                    self.redis_failed(&fault);
                    if self.breaker.configured() != LockMode::Auto {
                        let reason = format!("{fault:#}");
                        for job in jobs {
                            job.refuse(unavailable(anyhow::anyhow!(reason.clone())));
                        }
                        return finished;
                    }
                    tracing::warn!(error = %fault, "redis failed before commit; finishing the batch on the mysql path");
                    jobs
                }
            }
        } else {
            jobs
        };
        metrics::mysql_fallback();
        self.transact_batch(&mut jobs, None).await;
        for job in jobs {
            if job.requeue {
                // Without Redis locks there is no lease to lose.
                finished.retry.push(job);
            } else {
                job.request.send();
            }
        }
        finished
    }

    /// Claims and locks, transaction, cached replies and release. Hands the jobs back
    /// when Redis failed before anything was committed.
    async fn run_on_redis(
        &self,
        jobs: Vec<Job>,
        finished: &mut Finished,
    ) -> Result<(), (RedisFault, Vec<Job>)> {
        let conn = match self.redis.connection().await {
            Ok(conn) => conn,
            Err(fault) => return Err((fault, jobs)),
        };
        // Every wallet is locked with the claims, before their answers are known: a
        // wallet whose requests all turn out answered by the cache is released unused.
        let wallets = distinct_wallets(&jobs);
        let releases_seen = self.lock.release_count();
        let to_claim: Vec<usize> = jobs
            .iter()
            .enumerate()
            .filter(|(_, job)| job.claim.is_none())
            .map(|(i, _)| i)
            .collect();
        let requests: Vec<ClaimRequest<'_>> = to_claim
            .iter()
            .map(|&i| ClaimRequest {
                key: jobs[i].request.cache_key(),
                fingerprint: &jobs[i].fingerprint,
            })
            .collect();
        let begun = self
            .lock
            .begin_batch(&conn, Some((&self.idempotency, &requests)), &wallets)
            .await;
        drop(requests);
        let Begun {
            claims,
            locks,
            refused,
        } = match begun {
            Ok(begun) => begun,
            // Locks taken before the failure run out with their lease.
            Err(fault) => return Err((fault, jobs)),
        };
        self.breaker.record_success();
        let jobs = answer_from_claims(jobs, to_claim, claims);
        let (mut ready, held): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|job| locks.fence(job.user_id()).is_some());
        for mut job in held {
            let remaining = refused
                .iter()
                .find(|(user_id, _)| user_id.as_str() == job.user_id())
                .map_or(self.lock_poll, |(_, lease)| *lease);
            job.ready_at = Instant::now() + crate::lock::jitter(remaining.min(self.lock_poll));
            job.held_elsewhere = true;
            job.releases_seen = releases_seen;
            finished.retry.push(job);
        }
        let mut held = Held { locks, conn };
        if !ready.is_empty() {
            self.transact_batch(&mut ready, Some(&mut held)).await;
        }
        let Held { locks, conn } = held;

        let replies: Vec<Option<String>> = ready.iter().map(|job| job.request.reply()).collect();
        let settles: Vec<Settle<'_>> = ready
            .iter()
            .zip(&replies)
            .filter_map(|(job, reply)| {
                let token = job.claim.as_ref()?;
                let how = match reply {
                    _ if job.requeue => return None,
                    Some(reply) => Settlement::Done {
                        fingerprint: &job.fingerprint,
                        reply,
                    },
                    // Nothing was applied (or the reply could not be stored): free the
                    // key; the database replays an applied one.
                    None => Settlement::Abandon,
                };
                Some(Settle {
                    key: job.request.cache_key(),
                    token,
                    how,
                })
            })
            .collect();
        let ended = self
            .lock
            .finish_batch(&conn, Some((&self.idempotency, &settles)), locks)
            .await;
        drop(settles);
        match ended {
            Ok(waited_for) => finished.yielded = waited_for,
            Err(fault) => {
                // The answers stand: the database replays them if the cache missed them,
                // and the leases run out by themselves. Counted against Redis all the same.
                tracing::warn!(error = %fault, "could not cache the batch's replies and release its locks");
                self.redis_failed(&fault);
            }
        }
        for mut job in ready {
            if !job.requeue {
                job.request.send();
            } else if job.lost_leases + 1 >= MAX_ATTEMPTS {
                metrics::lock_timed_out();
                self.abandon_claims(std::slice::from_ref(&job)).await;
                job.refuse(ServiceError::LockTimeout);
            } else {
                job.lost_leases += 1;
                job.requeue = false;
                finished.retry.push(job);
            }
        }
        Ok(())
    }

    /// Runs the batch's transaction, retrying what may be retried ([`retrying`]).
    /// Every job ends answered, or marked to queue again.
    async fn transact_batch(&self, jobs: &mut [Job], held: Option<&mut Held>) {
        let mut progress = Progress {
            batch: self,
            jobs: &mut *jobs,
            held,
            careful: false,
        };
        let result = retrying(&mut progress).await;
        let open = jobs
            .iter_mut()
            .filter(|job| !job.requeue && !job.request.is_answered());
        match result {
            Ok(()) => {}
            Err(Failure::Stale { .. } | Failure::LeaseLost) => {
                metrics::lease_lost();
                tracing::info!("batch lease lost before commit; its requests queue again");
                open.for_each(|job| job.requeue = true);
            }
            Err(failure) => {
                let reason = format!("{:#}", anyhow::Error::from(failure.into_service_error()));
                for job in open {
                    let e = anyhow::anyhow!(reason.clone()).context("the batch did not commit");
                    job.request.fail(unavailable(e));
                }
            }
        }
        for job in jobs.iter_mut() {
            if !job.request.is_answered() {
                job.requeue = true;
            }
        }
    }

    /// Answers jobs that waited for their wallet longer than the lock wait.
    async fn expire(&self, jobs: Vec<Job>) {
        self.abandon_claims(&jobs).await;
        let now = Instant::now();
        for job in jobs {
            let error = if job.deadline <= now {
                ServiceError::Timeout
            } else {
                metrics::lock_timed_out();
                ServiceError::LockTimeout
            };
            job.refuse(error);
        }
    }

    /// Frees the claims of jobs answered without being applied.
    async fn abandon_claims(&self, jobs: &[Job]) {
        let settles: Vec<Settle<'_>> = jobs
            .iter()
            .filter_map(|job| {
                Some(Settle {
                    key: job.request.cache_key(),
                    token: job.claim.as_ref()?,
                    how: Settlement::Abandon,
                })
            })
            .collect();
        if settles.is_empty() {
            return;
        }
        let abandoned = async {
            let mut conn = self.redis.connection().await?;
            self.idempotency.settle_all(&mut conn, &settles).await
        }
        .await;
        if let Err(fault) = abandoned {
            // The claims expire on their own.
            tracing::warn!(error = %fault, "could not free idempotency claims");
        }
    }
}

/// A batch's transaction as it is tried: the locks held, and the jobs, each answered
/// or marked to queue again once it is decided.
struct Progress<'a, 'b> {
    batch: &'a Batch<'b>,
    jobs: &'a mut [Job],
    held: Option<&'a mut Held>,
    /// Take nothing on trust: an earlier try's trust did not hold.
    careful: bool,
}

impl Attempts for Progress<'_, '_> {
    type Output = ();

    /// Applies the jobs that are still open; those past their deadline are answered
    /// first.
    async fn attempt(&mut self) -> Result<(), Failure> {
        let now = Instant::now();
        for job in self.jobs.iter_mut() {
            if !job.requeue && !job.request.is_answered() && job.deadline <= now {
                job.request.fail(ServiceError::Timeout);
            }
        }
        let mut open: Vec<&mut Job> = self
            .jobs
            .iter_mut()
            .filter(|job| !job.requeue && !job.request.is_answered())
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let result = self
            .batch
            .apply_batch(&mut open, self.held.as_deref_mut(), self.careful)
            .await;
        if matches!(result, Err(Failure::Guessed)) {
            self.careful = true;
        }
        if result.is_err() {
            // Nothing was committed: what the rules decided does not stand.
            open.iter_mut().for_each(|job| job.request.undecide());
        }
        result
    }

    /// Moves the token forward; if that wallet's lease passed to someone else, its
    /// jobs queue again and the others go on.
    async fn refence(&mut self, user_id: &str, seen: u64) -> Result<(), Failure> {
        let Some(held) = self.held.as_deref_mut() else {
            return Ok(());
        };
        let refenced = self
            .batch
            .lock
            .refence_batch(&mut held.conn, &mut held.locks, user_id, seen)
            .await;
        if !matches!(refenced, Ok(true)) {
            for job in self.jobs.iter_mut() {
                if !job.request.is_answered() && job.user_id() == user_id {
                    job.requeue = true;
                }
            }
        }
        Ok(())
    }
}

/// The batch's wallets, each once.
fn distinct_wallets(jobs: &[Job]) -> Vec<Identifier> {
    let mut seen = HashSet::new();
    jobs.iter()
        .map(|job| job.request.user_id())
        .filter(|user_id| seen.insert(user_id.as_str()))
        .cloned()
        .collect()
}

/// Reads the claims taken for the jobs at `claimed` (in order) and answers those the
/// cache already knows; returns the jobs still to run. A batch has each key once
/// (`queue::take_batch`).
fn answer_from_claims(jobs: Vec<Job>, claimed: Vec<usize>, claims: Vec<Claim>) -> Vec<Job> {
    let mut by_job: Vec<Option<Claim>> = jobs.iter().map(|_| None).collect();
    for (i, claim) in claimed.into_iter().zip(claims) {
        by_job[i] = Some(claim);
    }
    let mut kept = Vec::with_capacity(jobs.len());
    for (mut job, claim) in jobs.into_iter().zip(by_job) {
        let Some(claim) = claim else {
            kept.push(job);
            continue;
        };
        match job.request.claimed(claim) {
            Some(token) => {
                job.claim = Some(token);
                kept.push(job);
            }
            None => job.request.send(),
        }
    }
    kept
}
