//! The HTTP API: routes, extractors, error mapping.

mod admin;
mod error;
mod extract;
mod health;
mod payments;
mod wallets;

use std::future::Future;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::dead_letters::DeadLetters;
use crate::wallet::{Outcome, ServiceError, WalletService};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub wallet: WalletService,
    pub dead_letters: DeadLetters,
}

impl FromRef<AppState> for WalletService {
    fn from_ref(state: &AppState) -> Self {
        state.wallet.clone()
    }
}

impl FromRef<AppState> for DeadLetters {
    fn from_ref(state: &AppState) -> Self {
        state.dead_letters.clone()
    }
}

/// Largest request body accepted; every API body is a few hundred bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// Builds the router with its state.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/wallets", post(wallets::create))
        .route("/wallets/{user_id}", get(wallets::show))
        .route("/wallets/{user_id}/top-ups", post(wallets::top_up))
        .route(
            "/wallets/{user_id}/transactions",
            get(wallets::transactions),
        )
        .route("/payments", post(payments::pay))
        .route("/payments/{order_id}", get(payments::show))
        .route("/payments/{order_id}/cancel", post(payments::cancel))
        .route("/admin/failed-events", get(admin::list))
        .route("/admin/failed-events/retry-all", post(admin::retry_all))
        .route("/admin/failed-events/{id}/retry", post(admin::retry))
        .route("/admin/failed-events/{id}/ignore", post(admin::ignore));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Largest page of any list.
const MAX_PAGE: u32 = 100;

/// `limit` of a list: 1 to 100, 20 when absent.
fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

/// `cursor` of a list: what an earlier page returned as `nextCursor`.
fn page_cursor(cursor: Option<String>) -> Result<Option<u64>, ApiError> {
    cursor
        .map(|c| c.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::Validation("cursor is not one this API returned".into()))
}

/// Runs a use case to its end even if the client hangs up: a debit that reached the
/// database finishes, releases its lock and caches its reply.
async fn detached<T, F>(work: F) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ServiceError>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ServiceError::Unavailable(e.into()).into()),
    }
}

/// `created` for a first answer, 200 with `Idempotent-Replayed: true` for a replay.
fn idempotent<T: Serialize>(outcome: Outcome<T>, created: StatusCode) -> Response {
    if outcome.replayed {
        let mut response = (StatusCode::OK, Json(outcome.value)).into_response();
        response.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
        response
    } else {
        (created, Json(outcome.value)).into_response()
    }
}
