//! Every error the API returns, as RFC 9457 `application/problem+json` with a stable
//! `code`. Internal causes are logged here, once, and never shown to the client.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::dlt::failed_events::Error as FailedEventError;
use crate::wallet::ServiceError;

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    FailedEvent(#[from] FailedEventError),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than the limit")]
    PayloadTooLarge,
    #[error("no such route")]
    RouteNotFound,
    #[error("the route does not take this method")]
    MethodNotAllowed,
    #[error("a valid API key is required: Authorization: Bearer <key>")]
    Unauthorized,
    #[error("this API key may not use this route")]
    Forbidden,
    #[error("too many requests for this API key")]
    RateLimited(Duration),
    #[error("the service is at its limit of requests in flight")]
    Overloaded,
    /// The whole-request backstop fired while the use case was still running: it may
    /// yet commit (a commit already sent cannot be called back).
    #[error("the request did not finish in time; its outcome is not known yet")]
    OutcomeUnknown,
}

impl From<crate::domain::ValidationError> for ApiError {
    fn from(e: crate::domain::ValidationError) -> Self {
        Self::Validation(e.0)
    }
}

/// The problem document (RFC 9457) plus our `code` extension member.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<code>`.
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    /// Stable, machine-readable: `validation_failed`, `insufficient_funds`, …
    code: &'static str,
    /// With `hold_not_open`: the hold as it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<crate::wallet::views::HoldView>,
}

impl ApiError {
    /// Status, stable code and title of each error.
    fn describe(&self) -> (StatusCode, &'static str, &'static str) {
        use ServiceError as S;
        match self {
            Self::Validation(_) | Self::Service(S::Validation(_)) => (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                "The request is not valid",
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "The request body must be application/json",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is too large",
            ),
            Self::RouteNotFound => (StatusCode::NOT_FOUND, "not_found", "No such resource"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "The service is overloaded",
            ),
            Self::Service(S::Timeout) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "The request took too long",
            ),
            Self::OutcomeUnknown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "The outcome of the request is not known yet",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::Service(S::WalletNotFound) => (
                StatusCode::NOT_FOUND,
                "wallet_not_found",
                "Wallet not found",
            ),
            Self::Service(S::PaymentNotFound) => (
                StatusCode::NOT_FOUND,
                "payment_not_found",
                "Payment not found",
            ),
            Self::Service(S::HoldNotFound) => {
                (StatusCode::NOT_FOUND, "hold_not_found", "Hold not found")
            }
            Self::Service(S::HoldNotOpen(_)) => (
                StatusCode::CONFLICT,
                "hold_not_open",
                "The hold was settled otherwise",
            ),
            Self::Service(S::CaptureExceedsHold) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "capture_exceeds_hold",
                "The capture is larger than the hold",
            ),
            Self::Service(S::InsufficientFunds) => (
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_funds",
                "Insufficient funds",
            ),
            Self::Service(S::BalanceLimit) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "balance_limit_exceeded",
                "The balance would exceed its limit",
            ),
            Self::Service(S::InProgress { .. }) => (
                StatusCode::CONFLICT,
                "request_in_progress",
                "The same request is being processed",
            ),
            Self::Service(S::KeyReused) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "The idempotency key was used for a different request",
            ),
            Self::FailedEvent(FailedEventError::NotFound) => (
                StatusCode::NOT_FOUND,
                "failed_event_not_found",
                "Failed event not found",
            ),
            Self::FailedEvent(FailedEventError::Ignored) => (
                StatusCode::CONFLICT,
                "failed_event_ignored",
                "The failed event was ignored",
            ),
            Self::Service(S::LockTimeout) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "lock_timeout",
                "The wallet is busy",
            ),
            Self::Service(S::Unavailable(_) | S::Redis(_))
            | Self::FailedEvent(FailedEventError::Unavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The service is temporarily unavailable",
            ),
        }
    }

    fn detail(&self) -> String {
        use ServiceError as S;
        match self {
            Self::Service(S::InsufficientFunds) => {
                "The wallet's available balance (balance minus holds) does not cover the \
                 amount; nothing was debited or held."
                    .into()
            }
            Self::Service(S::HoldNotOpen(hold)) => format!(
                "The hold is {}; nothing was changed. `hold` shows it as it stands.",
                hold.status
            ),
            Self::Service(S::CaptureExceedsHold) => {
                "A capture may take at most the amount held; nothing was captured.".into()
            }
            Self::Service(S::InProgress { .. }) => {
                "A request with this key is being processed; retry after the indicated delay."
                    .into()
            }
            Self::Service(S::KeyReused) => {
                "This key was already used with another user or amount; use a new key.".into()
            }
            Self::Service(S::LockTimeout) => {
                "The wallet stayed busy for the whole wait; nothing was applied, retry later."
                    .into()
            }
            Self::Service(S::Unavailable(_) | S::Redis(_)) => {
                "A dependency failed; retry with the same key, which is applied at most once."
                    .into()
            }
            Self::FailedEvent(FailedEventError::Unavailable(_)) => {
                "A dependency failed; nothing was changed, retry later.".into()
            }
            Self::Service(S::Timeout) => {
                "The request did not finish in time and was rolled back; retry later.".into()
            }
            Self::OutcomeUnknown => "The request did not finish in time and may still be applied. \
                 Retry with the same key: it is applied at most once, and the retry answers \
                 with its outcome."
                .into(),
            Self::RateLimited(_) => "Nothing was applied; retry after the indicated delay.".into(),
            Self::Overloaded => "Nothing was applied; retry later.".into(),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Service(ServiceError::InProgress { retry_after }) => Some(*retry_after),
            Self::Service(
                ServiceError::LockTimeout
                | ServiceError::Unavailable(_)
                | ServiceError::Redis(_)
                | ServiceError::Timeout,
            )
            | Self::FailedEvent(FailedEventError::Unavailable(_))
            | Self::Overloaded
            | Self::OutcomeUnknown => Some(Duration::from_secs(1)),
            Self::RateLimited(wait) => Some(*wait),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Service(ServiceError::Unavailable(cause))
            | Self::FailedEvent(FailedEventError::Unavailable(cause)) => {
                tracing::error!(error = ?cause, "request failed on a dependency");
            }
            Self::Service(ServiceError::Redis(fault)) => {
                tracing::error!(error = ?fault, "request failed on redis");
            }
            _ => {}
        }
        let (status, code, title) = self.describe();
        let problem = Problem {
            kind: format!("/problems/{}", code.replace('_', "-")),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            code,
            hold: match &self {
                Self::Service(ServiceError::HoldNotOpen(hold)) => Some((**hold).clone()),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: a client must not come back too early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, Self::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Problem answers every `/api/v1` operation may give (for the OpenAPI document only).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum CommonProblems {
    #[response(
        status = 400,
        description = "`validation_failed`",
        content_type = "application/problem+json"
    )]
    BadRequest(Problem),
    #[response(
        status = 401,
        description = "`unauthorized`: no or unknown API key",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "`forbidden`: the key's scope does not cover the route",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 404,
        description = "`wallet_not_found`, `payment_not_found`, `hold_not_found`, `failed_event_not_found`",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 429,
        description = "`rate_limited`, with Retry-After",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
    #[response(
        status = 503,
        description = "`unavailable`, `lock_timeout`, `request_timeout`, `overloaded` (nothing applied), or `outcome_unknown` (retry with the same key); all with Retry-After",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// Further problem answers of operations that take a JSON body and move money.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum WriteProblems {
    #[response(
        status = 402,
        description = "`insufficient_funds`: nothing debited, nothing cached",
        content_type = "application/problem+json"
    )]
    InsufficientFunds(Problem),
    #[response(
        status = 409,
        description = "`request_in_progress` (with Retry-After), `hold_not_open` (with the hold as it stands in `hold`) or `failed_event_ignored`",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    #[response(
        status = 413,
        description = "`payload_too_large`: body over 16 KiB",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "`unsupported_media_type`: body not application/json",
        content_type = "application/problem+json"
    )]
    UnsupportedMediaType(Problem),
    #[response(
        status = 422,
        description = "`idempotency_key_reused`, `balance_limit_exceeded` or `capture_exceeds_hold`",
        content_type = "application/problem+json"
    )]
    Unprocessable(Problem),
}
