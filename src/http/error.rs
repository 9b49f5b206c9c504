//! Every error the API returns, as RFC 9457 `application/problem+json` with a stable
//! `code`. Internal causes are logged here, once, and never shown to the client.
//!
//! Each kind of problem is one row of [`PROBLEMS`]: status, code, title, detail,
//! `Retry-After` and when it is answered. The OpenAPI document and the table of errors
//! in `docs/api.md` are made from it (a test holds the document to it).

use std::time::Duration;

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::dead_letters::store::Error as DeadLetterError;
use crate::wallet::ServiceError;

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
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

/// When a client should come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No `Retry-After`: the same request gets the same answer.
    No,
    /// `Retry-After: 1`.
    Soon,
    /// `Retry-After` as the error carries it (a rate limit's wait, a request in progress).
    Carried,
}

/// Which operations may answer a problem, for the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Every `/api/v1` operation ([`CommonProblems`]).
    ByAll,
    /// Operations that take a JSON body or move money ([`WriteProblems`]).
    ByWrites,
    /// Only outside the documented operations (an unknown route or method).
    Elsewhere,
}

/// One kind of problem: everything a client sees of it but a detail's variable part.
#[derive(Debug)]
pub struct ProblemKind {
    pub status: StatusCode,
    /// Stable and machine-readable; `type` is `/problems/<code>` with dashes.
    pub code: &'static str,
    pub title: &'static str,
    /// What the client reads in `detail`; `None` is the error's own message, and `{}`
    /// stands for it.
    pub detail: Option<&'static str>,
    pub retry: Retry,
    /// When it is answered, for the API's documentation (`docs/api.md` and OpenAPI).
    pub when: &'static str,
    pub answered: Answered,
}

macro_rules! problems {
    ($($name:ident = ($status:ident, $code:literal, $title:literal, $detail:expr, $retry:ident, $answered:ident, $when:literal);)+) => {
        $(const $name: ProblemKind = ProblemKind {
            status: StatusCode::$status,
            code: $code,
            title: $title,
            detail: $detail,
            retry: Retry::$retry,
            when: $when,
            answered: Answered::$answered,
        };)+
        /// Every problem the API answers with, in the order of its documentation.
        pub const PROBLEMS: &[&ProblemKind] = &[$(&$name),+];
    };
}

problems! {
    VALIDATION_FAILED = (BAD_REQUEST, "validation_failed", "The request is not valid", None, No, ByAll,
        "malformed JSON, unknown or missing field, bad amount, bad identifier, bad `limit`/`cursor`");
    UNAUTHORIZED = (UNAUTHORIZED, "unauthorized", "Unauthorized", None, No, ByAll,
        "no `Authorization: Bearer` header, or an unknown key (with `WWW-Authenticate: Bearer`)");
    INSUFFICIENT_FUNDS = (PAYMENT_REQUIRED, "insufficient_funds", "Insufficient funds",
        Some("The wallet's available balance (balance minus holds) does not cover the amount; nothing was debited or held."),
        No, ByWrites,
        "the available balance (balance − held) does not cover the debit or hold; nothing is cached, so the same key may succeed after a top-up");
    FORBIDDEN = (FORBIDDEN, "forbidden", "Forbidden", None, No, ByAll,
        "a key whose scope does not cover the route (top-ups need `funding`, dead letters `admin`); nothing applied");
    NOT_FOUND = (NOT_FOUND, "not_found", "No such resource", None, No, Elsewhere, "no such route");
    WALLET_NOT_FOUND = (NOT_FOUND, "wallet_not_found", "Wallet not found", None, No, ByAll, "unknown wallet");
    PAYMENT_NOT_FOUND = (NOT_FOUND, "payment_not_found", "Payment not found", None, No, ByAll, "unknown payment");
    HOLD_NOT_FOUND = (NOT_FOUND, "hold_not_found", "Hold not found", None, No, ByAll, "unknown hold");
    FAILED_EVENT_NOT_FOUND = (NOT_FOUND, "failed_event_not_found", "Failed event not found", None, No, ByAll,
        "admin routes: unknown dead letter");
    METHOD_NOT_ALLOWED = (METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed", None, No, Elsewhere,
        "the route does not take this method");
    REQUEST_IN_PROGRESS = (CONFLICT, "request_in_progress", "The same request is being processed",
        Some("A request with this key is being processed; retry after the indicated delay."), Carried, ByWrites,
        "the same key is being processed right now");
    HOLD_NOT_OPEN = (CONFLICT, "hold_not_open", "The hold was settled otherwise",
        Some("{}; nothing was changed. `hold` shows it as it stands."), No, ByWrites,
        "a capture or void of a hold settled otherwise (captured, voided, expired); the problem's `hold` member shows it");
    FAILED_EVENT_IGNORED = (CONFLICT, "failed_event_ignored", "The failed event was ignored", None, No, ByWrites,
        "admin routes: a retry of an ignored dead letter");
    PAYLOAD_TOO_LARGE = (PAYLOAD_TOO_LARGE, "payload_too_large", "The request body is too large", None, No, ByWrites,
        "body over 16 KiB");
    UNSUPPORTED_MEDIA_TYPE = (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "The request body must be application/json",
        None, No, ByWrites, "body not sent as `application/json`");
    IDEMPOTENCY_KEY_REUSED = (UNPROCESSABLE_ENTITY, "idempotency_key_reused", "The idempotency key was used for a different request",
        Some("This key was already used with another user or amount; use a new key."), No, ByWrites,
        "the `orderId` (or `topUpId`, `holdId`, `refundId`) was used with another user or amount, or an order id for both a payment and a hold");
    CAPTURE_EXCEEDS_HOLD = (UNPROCESSABLE_ENTITY, "capture_exceeds_hold", "The capture is larger than the hold",
        Some("A capture may take at most the amount held; nothing was captured."), No, ByWrites,
        "a capture larger than the amount held; nothing captured");
    REFUND_EXCEEDS_PAYMENT = (UNPROCESSABLE_ENTITY, "refund_exceeds_payment", "The refund is larger than what remains of the payment",
        Some("A payment's refunds may give back at most what was paid; nothing was refunded."), No, ByWrites,
        "a refund larger than what remains of the payment (nothing remains of a cancelled or fully refunded one); nothing refunded");
    BALANCE_LIMIT_EXCEEDED = (UNPROCESSABLE_ENTITY, "balance_limit_exceeded", "The balance would exceed its limit", None, No, ByWrites,
        "a top-up would take the balance over 10^14 (a refund may pass it: it gives back what was paid; a repeat of an applied top-up replays first)");
    RATE_LIMITED = (TOO_MANY_REQUESTS, "rate_limited", "Too many requests",
        Some("Nothing was applied; retry after the indicated delay."), Carried, ByAll,
        "the key is over its rate; nothing was applied");
    LOCK_TIMEOUT = (SERVICE_UNAVAILABLE, "lock_timeout", "The wallet is busy",
        Some("The wallet stayed busy for the whole wait; nothing was applied, retry later."), Soon, ByAll,
        "the wallet stayed busy for the whole lock wait");
    UNAVAILABLE = (SERVICE_UNAVAILABLE, "unavailable", "The service is temporarily unavailable",
        Some("A dependency failed; retry with the same key, which is applied at most once."), Soon, ByAll,
        "MySQL (or, with `WALLET_LOCK_MODE=redis`, Redis) is unavailable; retry with the same key");
    REQUEST_TIMEOUT = (SERVICE_UNAVAILABLE, "request_timeout", "The request took too long",
        Some("The request did not finish in time and was rolled back; retry later."), Soon, ByAll,
        "the request did not commit within `WALLET_REQUEST_TIMEOUT_MS`; its transaction rolled back");
    OUTCOME_UNKNOWN = (SERVICE_UNAVAILABLE, "outcome_unknown", "The outcome of the request is not known yet",
        Some("The request did not finish in time and may still be applied. Retry with the same key: it is applied at most once, and the retry answers with its outcome."),
        Soon, ByAll,
        "the request was still running one second past `WALLET_REQUEST_TIMEOUT_MS` (a commit the database was slow to acknowledge): it may yet be applied; retry with the same key, which answers with the outcome");
    OVERLOADED = (SERVICE_UNAVAILABLE, "overloaded", "The service is overloaded",
        Some("Nothing was applied; retry later."), Soon, ByAll,
        "more than `WALLET_MAX_IN_FLIGHT` requests in flight: shed, not queued");
}

/// The admin routes' own detail for a dependency that failed: they change nothing.
const ADMIN_UNAVAILABLE: &str = "A dependency failed; nothing was changed, retry later.";

impl ApiError {
    /// Which problem this error is.
    fn kind(&self) -> &'static ProblemKind {
        use ServiceError as S;
        match self {
            Self::Validation(_) | Self::Service(S::Validation(_)) => &VALIDATION_FAILED,
            Self::UnsupportedMediaType(_) => &UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => &PAYLOAD_TOO_LARGE,
            Self::RouteNotFound => &NOT_FOUND,
            Self::MethodNotAllowed => &METHOD_NOT_ALLOWED,
            Self::Unauthorized => &UNAUTHORIZED,
            Self::Forbidden => &FORBIDDEN,
            Self::RateLimited(_) => &RATE_LIMITED,
            Self::Overloaded => &OVERLOADED,
            Self::OutcomeUnknown => &OUTCOME_UNKNOWN,
            Self::Service(S::Timeout) => &REQUEST_TIMEOUT,
            Self::Service(S::WalletNotFound) => &WALLET_NOT_FOUND,
            Self::Service(S::PaymentNotFound) => &PAYMENT_NOT_FOUND,
            Self::Service(S::HoldNotFound) => &HOLD_NOT_FOUND,
            Self::Service(S::HoldNotOpen(_)) => &HOLD_NOT_OPEN,
            Self::Service(S::CaptureExceedsHold) => &CAPTURE_EXCEEDS_HOLD,
            Self::Service(S::InsufficientFunds) => &INSUFFICIENT_FUNDS,
            Self::Service(S::BalanceLimit) => &BALANCE_LIMIT_EXCEEDED,
            Self::Service(S::InProgress { .. }) => &REQUEST_IN_PROGRESS,
            Self::Service(S::KeyReused) => &IDEMPOTENCY_KEY_REUSED,
            Self::Service(S::RefundExceedsPayment) => &REFUND_EXCEEDS_PAYMENT,
            Self::Service(S::LockTimeout) => &LOCK_TIMEOUT,
            Self::Service(S::Unavailable(_) | S::Redis(_)) => &UNAVAILABLE,
            Self::DeadLetter(DeadLetterError::NotFound) => &FAILED_EVENT_NOT_FOUND,
            Self::DeadLetter(DeadLetterError::Ignored) => &FAILED_EVENT_IGNORED,
            Self::DeadLetter(DeadLetterError::Unavailable(_)) => &UNAVAILABLE,
        }
    }

    fn detail(&self, kind: &ProblemKind) -> String {
        if matches!(self, Self::DeadLetter(DeadLetterError::Unavailable(_))) {
            return ADMIN_UNAVAILABLE.into();
        }
        match kind.detail {
            None => self.to_string(),
            Some(text) if text.contains("{}") => {
                let message = self.to_string();
                let mut chars = message.chars();
                let message = match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect(),
                    None => message,
                };
                text.replace("{}", &message)
            }
            Some(text) => text.into(),
        }
    }

    fn retry_after(&self, kind: &ProblemKind) -> Option<Duration> {
        match (kind.retry, self) {
            (Retry::No, _) => None,
            (Retry::Soon, _) => Some(Duration::from_secs(1)),
            (Retry::Carried, Self::Service(ServiceError::InProgress { retry_after })) => {
                Some(*retry_after)
            }
            (Retry::Carried, Self::RateLimited(wait)) => Some(*wait),
            (Retry::Carried, _) => Some(Duration::from_secs(1)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Service(ServiceError::Unavailable(cause))
            | Self::DeadLetter(DeadLetterError::Unavailable(cause)) => {
                tracing::error!(error = ?cause, "request failed on a dependency");
            }
            Self::Service(ServiceError::Redis(fault)) => {
                tracing::error!(error = ?fault, "request failed on redis");
            }
            _ => {}
        }
        let kind = self.kind();
        let problem = Problem {
            kind: format!("/problems/{}", kind.code.replace('_', "-")),
            title: kind.title,
            status: kind.status.as_u16(),
            detail: self.detail(kind),
            code: kind.code,
            hold: match &self {
                Self::Service(ServiceError::HoldNotOpen(hold)) => Some((**hold).clone()),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (kind.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after(kind) {
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

/// Problem answers every `/api/v1` operation may give (for the OpenAPI document),
/// from [`PROBLEMS`].
pub struct CommonProblems;

/// Further problem answers of operations that take a JSON body and move money.
pub struct WriteProblems;

impl utoipa::IntoResponses for CommonProblems {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        responses(Answered::ByAll)
    }
}

impl utoipa::IntoResponses for WriteProblems {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        responses(Answered::ByWrites)
    }
}

/// One response per status of the problems `answered` picks, naming each code and
/// when it is answered.
fn responses(answered: Answered) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let mut by_status: BTreeMap<u16, Vec<&ProblemKind>> = BTreeMap::new();
    for kind in PROBLEMS.iter().filter(|kind| kind.answered == answered) {
        by_status
            .entry(kind.status.as_u16())
            .or_default()
            .push(kind);
    }
    by_status
        .into_iter()
        .map(|(status, kinds)| {
            let description = kinds
                .iter()
                .map(|kind| format!("`{}`{}: {}", kind.code, retry_note(kind), kind.when))
                .collect::<Vec<_>>()
                .join("; ");
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// How the documentation marks a problem answered with `Retry-After`.
pub fn retry_note(kind: &ProblemKind) -> &'static str {
    match kind.retry {
        Retry::No => "",
        _ => " + `Retry-After`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of errors in `docs/api.md`, as [`PROBLEMS`] writes it.
    fn table() -> String {
        let mut rows = vec![
            "| status | `code` | when |".to_owned(),
            "|---|---|---|".to_owned(),
        ];
        for kind in PROBLEMS {
            rows.push(format!(
                "| {} | `{}`{} | {} |",
                kind.status.as_u16(),
                kind.code,
                retry_note(kind),
                kind.when
            ));
        }
        rows.join("\n")
    }

    #[test]
    fn the_api_document_lists_every_problem_as_the_table_says() {
        let api = include_str!("../../docs/api.md");
        assert!(
            api.contains(&table()),
            "docs/api.md's table of errors must read:\n{}",
            table()
        );
    }

    #[test]
    fn every_code_is_unique() {
        let mut codes: Vec<&str> = PROBLEMS.iter().map(|kind| kind.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), PROBLEMS.len());
    }
}
