//! `/api/v1/wallets…`

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{CommonProblems, WriteProblems};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{idempotent, ApiError, Detach};
use crate::domain::{Amount, Identifier, RawAmount};
use crate::wallet::views::{LedgerPage, TopUpView, WalletView};
use crate::wallet::WalletService;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateWallet {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "alice")]
    user_id: String,
}

/// `POST /api/v1/wallets`: 201 with the new wallet, 200 with the existing one.
#[utoipa::path(post, path = "/api/v1/wallets", tag = "wallets", request_body = CreateWallet,
    responses(
        (status = 201, description = "Created", body = WalletView),
        (status = 200, description = "The wallet existed", body = WalletView),
        CommonProblems, WriteProblems,
    ))]
pub async fn create(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiJson(body): ApiJson<CreateWallet>,
) -> Result<Response, ApiError> {
    let user_id = Identifier::parse("userId", body.user_id)?;
    let outcome = detach
        .run(async move { service.create_wallet(&user_id).await })
        .await?;
    let status = if outcome.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(outcome.value)).into_response())
}

/// `GET /api/v1/wallets/{userId}`
#[utoipa::path(get, path = "/api/v1/wallets/{user_id}", tag = "wallets",
    params(("user_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 200, description = "The wallet", body = WalletView), CommonProblems))]
pub async fn show(
    State(service): State<WalletService>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<WalletView>, ApiError> {
    let user_id = Identifier::parse("userId", user_id)?;
    Ok(Json(service.wallet(&user_id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TopUpRequest {
    /// The idempotency key of the top-up.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$", example = "topup-1")]
    top_up_id: String,
    /// A decimal string (or a JSON integer), > 0, ≤ 10^12, at most the currency's digits.
    #[schema(value_type = String, example = "150000")]
    amount: RawAmount,
}

/// `POST /api/v1/wallets/{userId}/top-ups`: 201, or 200 with the same body for a repeat.
#[utoipa::path(post, path = "/api/v1/wallets/{user_id}/top-ups", tag = "wallets", request_body = TopUpRequest,
    params(("user_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 201, description = "Credited", body = TopUpView),
        (status = 200, description = "A repeat: the same body, credited once", body = TopUpView,
            headers(("Idempotent-Replayed" = String, description = "true"))),
        CommonProblems, WriteProblems,
    ))]
pub async fn top_up(
    State(detach): State<Detach>,
    State(service): State<WalletService>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<TopUpRequest>,
) -> Result<Response, ApiError> {
    let user_id = Identifier::parse("userId", user_id)?;
    let top_up_id = Identifier::parse("topUpId", body.top_up_id)?;
    let amount = Amount::parse("amount", body.amount, service.currency())?;
    let outcome = detach
        .run(async move { service.top_up(top_up_id, user_id, amount).await })
        .await?;
    Ok(idempotent(outcome, StatusCode::CREATED))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100, 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/v1/wallets/{userId}/transactions?limit&cursor`: newest first.
#[utoipa::path(get, path = "/api/v1/wallets/{user_id}/transactions", tag = "wallets",
    params(("user_id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,64}$"), PageQuery),
    responses((status = 200, description = "Ledger entries, newest first", body = LedgerPage), CommonProblems))]
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
