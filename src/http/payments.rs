//! `/api/v1/payments…`

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::extract::{optional_json, ApiJson, ApiPath};
use super::{detached, idempotent, ApiError};
use crate::domain::{Amount, Identifier, RawAmount};
use crate::wallet::views::PaymentView;
use crate::wallet::WalletService;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PayRequest {
    order_id: String,
    user_id: String,
    amount: RawAmount,
}

/// `POST /api/v1/payments`: 201, or 200 with the identical body for a repeat.
pub async fn pay(
    State(service): State<WalletService>,
    ApiJson(body): ApiJson<PayRequest>,
) -> Result<Response, ApiError> {
    let order_id = Identifier::parse("orderId", body.order_id)?;
    let user_id = Identifier::parse("userId", body.user_id)?;
    let amount = Amount::parse("amount", body.amount, service.currency())?;
    let outcome = detached(async move { service.pay(order_id, user_id, amount).await }).await?;
    Ok(idempotent(outcome, StatusCode::CREATED))
}

/// `GET /api/v1/payments/{orderId}`: the payment as it is now.
pub async fn show(
    State(service): State<WalletService>,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let order_id = Identifier::parse("orderId", order_id)?;
    Ok(Json(service.payment(&order_id).await?))
}

/// Longest cancel reason kept.
const MAX_REASON: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    reason: Option<String>,
}

/// `POST /api/v1/payments/{orderId}/cancel` with an optional `{"reason"}` body: 200; a
/// repeat answers the same body.
pub async fn cancel(
    State(service): State<WalletService>,
    ApiPath(order_id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let order_id = Identifier::parse("orderId", order_id)?;
    let reason = optional_json::<CancelRequest>(&body)?.and_then(|r| r.reason);
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(ApiError::Validation(format!(
            "reason must be at most {MAX_REASON} characters"
        )));
    }
    let outcome = detached(async move { service.cancel(order_id, reason).await }).await?;
    Ok(idempotent(outcome, StatusCode::OK))
}
