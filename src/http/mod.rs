//! The HTTP API: routes (documented by OpenAPI), extractors, error mapping, and the
//! layers every request passes: request id, tracing, metrics, load shedding, a
//! whole-request timeout, body limit, API keys and rate limits; [`serve`] bounds the
//! connections underneath (header and keep-alive timeouts, a connection cap).

mod auth;
mod dead_letters;
mod error;
mod extract;
mod health;
mod holds;
mod openapi;
mod payments;
mod serve;
mod wallets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Gatekeeper;
pub use error::ApiError;
pub use openapi::ApiDoc;
pub use serve::serve;

use crate::configuration::{ApiSettings, Scope};
use crate::dead_letters::store::DeadLetters;
use crate::support::tasks::Tasks;
use crate::telemetry::metrics::{label_route, track_http};
use crate::wallet::{Outcome, ServiceError, WalletService};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub wallet: WalletService,
    pub dead_letters: DeadLetters,
    pub metrics: PrometheusHandle,
    detach: Detach,
    document: openapi::Document,
}

impl FromRef<AppState> for Detach {
    fn from_ref(state: &AppState) -> Self {
        state.detach.clone()
    }
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

impl FromRef<AppState> for PrometheusHandle {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

impl FromRef<AppState> for openapi::Document {
    fn from_ref(state: &AppState) -> Self {
        state.document.clone()
    }
}

/// Largest request body accepted; every API body is a few hundred bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// How much longer than the request timeout the outer backstop waits: money movements
/// enforce the timeout themselves (and roll back), this only catches the rest, such as
/// a commit the database is slow to acknowledge.
const BACKSTOP_GRACE: Duration = Duration::from_secs(1);

/// The `/api/v1` routes (behind API keys; top-ups need a `funding` key, the failed-events
/// routes an `admin` key) and the operations routes, each with its OpenAPI operation.
fn routes(gatekeeper: Gatekeeper) -> OpenApiRouter<AppState> {
    let only = |scope| middleware::from_fn_with_state(scope, auth::require_scope);
    let funding = OpenApiRouter::new()
        .routes(routes!(wallets::top_up))
        .route_layer(only(Scope::Funding));
    let admin = OpenApiRouter::new()
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::retry_all))
        .routes(routes!(dead_letters::retry))
        .routes(routes!(dead_letters::ignore))
        .route_layer(only(Scope::Admin));
    let api = OpenApiRouter::new()
        .routes(routes!(wallets::create))
        .routes(routes!(wallets::show))
        .routes(routes!(wallets::transactions))
        .routes(routes!(payments::pay))
        .routes(routes!(payments::show))
        .routes(routes!(payments::cancel))
        .routes(routes!(payments::refund))
        .routes(routes!(holds::place))
        .routes(routes!(holds::show))
        .routes(routes!(holds::capture))
        .routes(routes!(holds::void))
        .merge(funding)
        .merge(admin)
        .layer(middleware::from_fn_with_state(
            gatekeeper,
            auth::require_key,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api)
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::document))
}

/// Builds the router with its state and layers.
pub fn router(
    wallet: WalletService,
    dead_letters: DeadLetters,
    metrics: PrometheusHandle,
    gatekeeper: Gatekeeper,
    settings: &ApiSettings,
    tasks: Tasks,
) -> Router {
    let (router, doc) = routes(gatekeeper).split_for_parts();
    let document = openapi::Document(Arc::new(
        doc.to_json().expect("the OpenAPI document serialises"),
    ));
    let state = AppState {
        wallet,
        dead_letters,
        metrics,
        detach: Detach(tasks),
        document,
    };
    let request_id = HeaderName::from_static("x-request-id");
    let in_flight = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(label_route))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            settings.request_timeout + BACKSTOP_GRACE,
            backstop,
        ))
        .layer(middleware::from_fn_with_state(in_flight, shed_load))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Outermost, so that every answer is counted, 503s of the layers above included.
        .layer(middleware::from_fn(track_http))
        .with_state(state)
}

/// The span every request's log lines share: method, path and request id.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}

/// Sheds load: past the cap of requests in flight, answer 503 at once instead of
/// queueing without bound.
async fn shed_load(
    State(in_flight): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match in_flight.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::Overloaded.into_response(),
    }
}

/// The whole-request timeout's backstop. The use case runs detached and may be past its
/// own deadline check, with a commit on its way, so the answer cannot claim a rollback:
/// it says the outcome is unknown and that a retry with the same key will tell.
async fn backstop(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("request outlived its timeout and the backstop; outcome unknown");
            ApiError::OutcomeUnknown.into_response()
        }
    }
}

/// Runs use cases to their end even if the client hangs up: a debit that reached the
/// database finishes, releases its lock and caches its reply. Each runs as a task of the
/// application, so shutdown waits for it.
#[derive(Clone)]
pub struct Detach(Tasks);

impl Detach {
    async fn run<T, E, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        match self.0.spawn(work.in_current_span()).await {
            Ok(result) => result.map_err(Into::into),
            Err(e) => Err(ServiceError::Unavailable(e.into()).into()),
        }
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
