//! Where a request is answered as a replay, decided in one place: by its idempotency
//! claim in Redis (the cached answer, a request in progress, a key used for another
//! request), or by the record under its key in MySQL. A replay is the first answer, byte
//! for byte; a key recorded for another request is refused.

use std::time::Duration;

use super::{unavailable, Outcome, ServiceError};
use crate::idempotency::{Claim, ClaimToken};
use crate::telemetry::metrics;

/// How long a request answered `request_in_progress` should wait before it asks again.
const IN_PROGRESS_RETRY: Duration = Duration::from_secs(1);

/// What an idempotency claim decided before anything ran.
pub(super) enum Claimed<T> {
    /// The key is ours: go on.
    Ours(ClaimToken),
    /// The request is answered already.
    Answered(Result<Outcome<T>, ServiceError>),
}

/// Reads a claim of `scope`; `parse` reads a cached answer.
pub(super) fn claimed<T>(
    scope: &'static str,
    claim: Claim,
    parse: impl FnOnce(&str) -> serde_json::Result<T>,
) -> Claimed<T> {
    let answer = match claim {
        Claim::Claimed(token) => return Claimed::Ours(token),
        Claim::Done(reply) => {
            metrics::replayed(scope);
            parse(&reply)
                .map(|value| Outcome {
                    value,
                    replayed: true,
                })
                .map_err(unavailable)
        }
        Claim::Pending(_) => {
            metrics::in_progress(scope);
            Err(ServiceError::InProgress {
                retry_after: IN_PROGRESS_RETRY,
            })
        }
        Claim::Mismatch => {
            metrics::key_reused(scope);
            Err(ServiceError::KeyReused)
        }
    };
    Claimed::Answered(answer)
}

/// A request of `scope` whose key MySQL has a record of: its answer again when the
/// record is of the same request (`same_request`), else a refusal.
pub(super) fn recorded<T>(
    scope: &'static str,
    same_request: bool,
    answer: impl FnOnce() -> T,
) -> Result<Outcome<T>, ServiceError> {
    if !same_request {
        metrics::key_reused(scope);
        return Err(ServiceError::KeyReused);
    }
    metrics::replayed(scope);
    Ok(Outcome {
        value: answer(),
        replayed: true,
    })
}
