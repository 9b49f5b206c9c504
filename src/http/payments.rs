//! `/api/v1/payments…`

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{CommonProblems, WriteProblems};
use super::extract::{optional_json, ApiJson, ApiPath};
use super::{idempotent, ApiError, Detach};
use crate::domain::{Amount, Identifier, RawAmount};
use crate::wallet::views::{PaymentView, RefundView};
use crate::wallet::WalletService;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PayRequest {
    /// The idempotency key: one order debits at most once.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "order-1")]
    order_id: String,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "alice")]
    user_id: String,
    /// A decimal string (or a JSON integer), > 0, ≤ 10^12, at most the currency's digits.
    #[schema(value_type = String, example = "1000")]
    amount: RawAmount,
}

/// `POST /api/v1/payments`: 201, or 200 with the identical body for a repeat.
#[utoipa::path(post, path = "/api/v1/payments", tag = "payments", request_body = PayRequest,
    responses(
        (status = 201, description = "Debited", body = PaymentView),
        (status = 200, description = "A repeat: the identical body, debited once", body = PaymentView,
            headers(("Idempotent-Replayed" = String, description = "true"))),
        CommonProblems, WriteProblems,
    ))]
pub async fn pay(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiJson(body): ApiJson<PayRequest>,
) -> Result<Response, ApiError> {
    let order_id = Identifier::parse("orderId", body.order_id)?;
    let user_id = Identifier::parse("userId", body.user_id)?;
    let amount = Amount::parse("amount", body.amount, service.currency())?;
    let outcome = detach
        .run(async move { service.pay(order_id, user_id, amount).await })
        .await?;
    Ok(idempotent(outcome, StatusCode::CREATED))
}

/// `GET /api/v1/payments/{orderId}`: the payment as it is now.
#[utoipa::path(get, path = "/api/v1/payments/{order_id}", tag = "payments",
    params(("order_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 200, description = "The payment", body = PaymentView), CommonProblems))]
pub async fn show(
    State(service): State<WalletService>,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let order_id = Identifier::parse("orderId", order_id)?;
    Ok(Json(service.payment(&order_id).await?))
}

/// Longest cancel or refund reason kept.
const MAX_REASON: usize = 255;

fn check_reason(reason: &Option<String>) -> Result<(), ApiError> {
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(ApiError::Validation(format!(
            "reason must be at most {MAX_REASON} characters"
        )));
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefundRequest {
    /// The idempotency key: one refund id gives back at most once.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "refund-1")]
    refund_id: String,
    /// A decimal string (or a JSON integer), > 0, at most what remains of the payment;
    /// all that remains when absent.
    #[schema(value_type = Option<String>, example = "300")]
    amount: Option<RawAmount>,
    #[schema(max_length = 255)]
    reason: Option<String>,
}

/// `POST /api/v1/payments/{orderId}/refunds`: 201, or 200 with the identical body for a
/// repeat.
#[utoipa::path(post, path = "/api/v1/payments/{order_id}/refunds", tag = "payments",
    params(("order_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    request_body = RefundRequest,
    responses(
        (status = 201, description = "Refunded", body = RefundView),
        (status = 200, description = "A repeat: the identical body, refunded once", body = RefundView,
            headers(("Idempotent-Replayed" = String, description = "true"))),
        CommonProblems, WriteProblems,
    ))]
pub async fn refund(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiPath(order_id): ApiPath<String>,
    ApiJson(body): ApiJson<RefundRequest>,
) -> Result<Response, ApiError> {
    let order_id = Identifier::parse("orderId", order_id)?;
    let refund_id = Identifier::parse("refundId", body.refund_id)?;
    let amount = body
        .amount
        .map(|raw| Amount::parse("amount", raw, service.currency()))
        .transpose()?;
    check_reason(&body.reason)?;
    let outcome = detach
        .run(async move {
            service
                .refund(refund_id, order_id, amount, body.reason)
                .await
        })
        .await?;
    Ok(idempotent(outcome, StatusCode::CREATED))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[schema(max_length = 255)]
    reason: Option<String>,
}

/// `POST /api/v1/payments/{orderId}/cancel` with an optional `{"reason"}` body: 200; a
/// repeat answers the same body.
#[utoipa::path(post, path = "/api/v1/payments/{order_id}/cancel", tag = "payments",
    params(("order_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    request_body(content = Option<CancelRequest>, description = "Optional; may be empty"),
    responses(
        (status = 200, description = "Cancelled and credited back once (also for a repeat)", body = PaymentView),
        CommonProblems, WriteProblems,
    ))]
pub async fn cancel(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiPath(order_id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let order_id = Identifier::parse("orderId", order_id)?;
    let reason = optional_json::<CancelRequest>(&body)?.and_then(|r| r.reason);
    check_reason(&reason)?;
    let outcome = detach
        .run(async move { service.cancel(order_id, reason).await })
        .await?;
    Ok(idempotent(outcome, StatusCode::OK))
}
