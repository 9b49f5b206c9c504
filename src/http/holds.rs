//! `/api/v1/holds…`: reserve funds, then capture or void them, or let them expire.

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
use crate::wallet::views::HoldView;
use crate::wallet::WalletService;
use crate::wallet::{PlaceHold, Settlement};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HoldRequest {
    /// The idempotency key: one hold id reserves at most once.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "order-1")]
    hold_id: String,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "alice")]
    user_id: String,
    /// A decimal string (or a JSON integer), > 0, ≤ 10^12, at most the currency's digits.
    #[schema(value_type = String, example = "25000")]
    amount: RawAmount,
    /// Seconds until the hold is released by itself: 1 to `WALLET_HOLD_MAX_TTL_SECS`
    /// (30 days unless configured); `WALLET_HOLD_DEFAULT_TTL_SECS` (7 days) if absent.
    #[schema(minimum = 1, example = 3600)]
    expires_in_seconds: Option<u64>,
}

/// `POST /api/v1/holds`: 201, or 200 with the identical body for a repeat.
#[utoipa::path(post, path = "/api/v1/holds", tag = "holds", request_body = HoldRequest,
    responses(
        (status = 201, description = "Held: the amount is no longer available to spend", body = HoldView),
        (status = 200, description = "A repeat: the identical body, held once", body = HoldView,
            headers(("Idempotent-Replayed" = String, description = "true"))),
        CommonProblems, WriteProblems,
    ))]
pub async fn place(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Result<Response, ApiError> {
    let hold = PlaceHold {
        hold_id: Identifier::parse("holdId", body.hold_id)?,
        user_id: Identifier::parse("userId", body.user_id)?,
        amount: Amount::parse("amount", body.amount, service.currency())?,
        expires_in: service.hold_life(body.expires_in_seconds)?,
    };
    let outcome = detach
        .run(async move { service.place_hold(hold).await })
        .await?;
    Ok(idempotent(outcome, StatusCode::CREATED))
}

/// `GET /api/v1/holds/{holdId}`: the hold as it is now.
#[utoipa::path(get, path = "/api/v1/holds/{hold_id}", tag = "holds",
    params(("hold_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 200, description = "The hold", body = HoldView), CommonProblems))]
pub async fn show(
    State(service): State<WalletService>,
    ApiPath(hold_id): ApiPath<String>,
) -> Result<Json<HoldView>, ApiError> {
    let hold_id = Identifier::parse("holdId", hold_id)?;
    Ok(Json(service.hold(&hold_id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// What to debit, at most the amount held; the whole hold if absent. The rest is
    /// released.
    #[schema(value_type = Option<String>, example = "20000")]
    amount: Option<RawAmount>,
}

/// `POST /api/v1/holds/{holdId}/capture` with an optional `{"amount"}` body.
#[utoipa::path(post, path = "/api/v1/holds/{hold_id}/capture", tag = "holds",
    params(("hold_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    request_body(content = Option<CaptureRequest>, description = "Optional; may be empty"),
    responses(
        (status = 200, description = "Captured once (also for a repeat, with Idempotent-Replayed)", body = HoldView),
        CommonProblems, WriteProblems,
    ))]
pub async fn capture(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiPath(hold_id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hold_id = Identifier::parse("holdId", hold_id)?;
    let amount = optional_json::<CaptureRequest>(&body)?
        .and_then(|r| r.amount)
        .map(|raw| Amount::parse("amount", raw, service.currency()))
        .transpose()?;
    settle(detach, service, hold_id, Settlement::Capture(amount)).await
}

/// `POST /api/v1/holds/{holdId}/void`: releases the hold.
#[utoipa::path(post, path = "/api/v1/holds/{hold_id}/void", tag = "holds",
    params(("hold_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "Voided once (also for a repeat, with Idempotent-Replayed)", body = HoldView),
        CommonProblems, WriteProblems,
    ))]
pub async fn void(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiPath(hold_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let hold_id = Identifier::parse("holdId", hold_id)?;
    settle(detach, service, hold_id, Settlement::Void).await
}

async fn settle(
    detach: Detach,
    service: WalletService,
    hold_id: Identifier,
    how: Settlement,
) -> Result<Response, ApiError> {
    let outcome = detach
        .run(async move { service.settle_hold(hold_id, how).await })
        .await?;
    Ok(idempotent(outcome, StatusCode::OK))
}
