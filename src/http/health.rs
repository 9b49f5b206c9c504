//! `/healthz` (the process answers) and `/readyz` (it can serve).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::outbox::OutboxStatus;
use crate::wallet::WalletService;

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process answers")))]
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready while MySQL answers. Redis down is degraded, not unready: the MySQL fallback
/// serves, and `lockMode` says so. A stalled outbox makes the status `degraded`, still
/// with 200.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready or degraded: {status, mysql, redis, lockMode, outbox: {status, pending, oldestPendingMs, lastPublishedMs}}"),
        (status = 503, description = "MySQL does not answer"),
    ))]
pub async fn ready(State(service): State<WalletService>) -> (StatusCode, Json<Value>) {
    let r = service.readiness().await;
    let up = |ok: bool| if ok { "up" } else { "down" };
    let status = if r.mysql {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // A stalled outbox degrades the instance but keeps it serving: debits still commit
    // and their events wait in the outbox, and taking every instance out of rotation
    // over a broker fault would turn late events into refused payments.
    let stalled = r
        .outbox
        .as_ref()
        .is_some_and(|o| o.status == OutboxStatus::Stalled);
    let body = json!({
        "status": match (r.mysql, stalled) {
            (false, _) => "unavailable",
            (true, true) => "degraded",
            (true, false) => "ready",
        },
        "mysql": up(r.mysql),
        "redis": up(r.redis),
        "lockMode": r.lock_mode,
        "outbox": r.outbox,
    });
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics(
    State(handle): State<metrics_exporter_prometheus::PrometheusHandle>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
}
