//! `/api/v1/wallets…`

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{detached, idempotent, ApiError};
use crate::domain::{Amount, Identifier, RawAmount};
use crate::wallet::views::{LedgerPage, WalletView};
use crate::wallet::WalletService;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateWallet {
    user_id: String,
}

/// `POST /api/v1/wallets`: 201 with the new wallet, 200 with the existing one.
pub async fn create(
    State(service): State<WalletService>,
    ApiJson(body): ApiJson<CreateWallet>,
) -> Result<Response, ApiError> {
    let user_id = Identifier::parse("userId", body.user_id)?;
    let outcome = detached(async move { service.create_wallet(&user_id).await }).await?;
    let status = if outcome.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(outcome.value)).into_response())
}

/// `GET /api/v1/wallets/{userId}`
pub async fn show(
    State(service): State<WalletService>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<WalletView>, ApiError> {
    let user_id = Identifier::parse("userId", user_id)?;
    Ok(Json(service.wallet(&user_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TopUpRequest {
    top_up_id: String,
    amount: RawAmount,
}

/// `POST /api/v1/wallets/{userId}/top-ups`: 201, or 200 with the same body for a repeat.
pub async fn top_up(
    State(service): State<WalletService>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<TopUpRequest>,
) -> Result<Response, ApiError> {
    let user_id = Identifier::parse("userId", user_id)?;
    let top_up_id = Identifier::parse("topUpId", body.top_up_id)?;
    let amount = Amount::parse("amount", body.amount, service.currency())?;
    let outcome = detached(async move { service.top_up(top_up_id, user_id, amount).await }).await?;
    Ok(idempotent(outcome, StatusCode::CREATED))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/wallets/{userId}/transactions?limit&cursor`: newest first.
pub async fn transactions(
    State(service): State<WalletService>,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let user_id = Identifier::parse("userId", user_id)?;
    let limit = super::page_limit(query.limit)?;
    let before = super::page_cursor(query.cursor)?;
    Ok(Json(service.transactions(&user_id, before, limit).await?))
}
