//! One transaction attempt's failure, and the retry rule a batch's transaction follows
//! ([`retrying`]), under Redis locks or on the fallback.

use std::future::Future;

use super::ServiceError;
use crate::store;
use crate::telemetry::metrics;

/// How often one transaction is tried when it loses a race it could not see (a
/// deadlock, a stale fencing token, an order inserted meanwhile) before its callers get
/// 503, and how many lost leases one request lives through.
pub(super) const MAX_ATTEMPTS: u32 = 3;

/// Why one transaction did not commit. Nothing of it was applied.
#[derive(Debug)]
pub(super) enum Failure {
    /// The answer, for good: a refusal, or a dependency that failed.
    Failed(ServiceError),
    /// A wallet was written under a newer fencing token than ours.
    Stale { user_id: String, seen: u64 },
    /// A lease could not be renewed: we may no longer own the lock.
    LeaseLost,
    /// A deadlock, a conditional update that lost a race, or a key recorded by someone
    /// else meanwhile: safe to retry.
    Retry(anyhow::Error),
    /// What the transaction took on trust instead of reading it did not hold (a
    /// wallet's funds as its last holder noted them, a key whose fresh claim said it was
    /// new): the next try reads it. Not counted against [`MAX_ATTEMPTS`] the first time.
    Guessed,
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if store::is_lock_conflict(&e) || store::is_unique_violation(&e) {
            Self::Retry(e.into())
        } else {
            Self::Failed(ServiceError::Unavailable(e.into()))
        }
    }
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        Self::Failed(e)
    }
}

impl Failure {
    /// A conditional update matched no row although its checks passed.
    pub(super) fn conflict() -> Self {
        Self::Retry(anyhow::anyhow!("a conditional update matched no row"))
    }

    /// The answer when no retry is left.
    pub(super) fn into_service_error(self) -> ServiceError {
        match self {
            Self::Failed(e) => e,
            Self::Stale { .. } | Self::LeaseLost => ServiceError::LockTimeout,
            Self::Retry(e) => ServiceError::Unavailable(e.context("retries exhausted")),
            Self::Guessed => {
                ServiceError::Unavailable(anyhow::anyhow!("the wallet changed under every try"))
            }
        }
    }
}

/// A transaction that may be tried again: what [`retrying`] runs.
pub(super) trait Attempts: Send {
    type Output: Send;

    /// One try: one transaction, committed or rolled back.
    fn attempt(&mut self) -> impl Future<Output = Result<Self::Output, Failure>> + Send;

    /// After [`Failure::Stale`]: moves `user_id`'s fencing token past `seen`, so the next
    /// try may write; an error ends the tries. Without Redis locks there is nothing to
    /// move.
    fn refence(
        &mut self,
        user_id: &str,
        seen: u64,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Tries `attempts` until one commits, fails for good, or [`MAX_ATTEMPTS`] were made.
/// A [`Failure::Retry`] is tried again at once; a [`Failure::Stale`] once the token was
/// moved forward ([`Attempts::refence`]); anything else ends the tries.
pub(super) async fn retrying<A: Attempts>(attempts: &mut A) -> Result<A::Output, Failure> {
    let mut tried = 1;
    let mut guessed = false;
    loop {
        let failure = match attempts.attempt().await {
            Ok(done) => return Ok(done),
            Err(failure) => failure,
        };
        if matches!(failure, Failure::Guessed) && !guessed {
            // The next try reads what this one guessed: it does not count.
            guessed = true;
            continue;
        }
        if tried >= MAX_ATTEMPTS {
            return Err(failure);
        }
        tried += 1;
        match failure {
            Failure::Retry(e) => tracing::debug!(error = %e, "retrying the transaction"),
            Failure::Guessed => tracing::debug!("retrying the transaction, reading its wallets"),
            Failure::Stale { user_id, seen } => {
                metrics::stale_fence();
                attempts.refence(&user_id, seen).await?;
            }
            other => return Err(other),
        }
    }
}
