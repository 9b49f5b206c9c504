//! `/healthz` (the process answers) and `/readyz` (it can serve).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::wallet::WalletService;

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready while MySQL answers. Redis down is degraded, not unready: the MySQL fallback
/// serves, and `lockMode` says so.
pub async fn ready(State(service): State<WalletService>) -> (StatusCode, Json<Value>) {
    let r = service.readiness().await;
    let up = |ok: bool| if ok { "up" } else { "down" };
    let status = if r.mysql {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if r.mysql { "ready" } else { "unavailable" },
        "mysql": up(r.mysql),
        "redis": up(r.redis),
        "lockMode": r.lock_mode,
        "outbox": r.outbox,
    });
    (status, Json(body))
}
