//! `/api/v1/admin/failed-events…`: the dead letters, for operators.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{CommonProblems, WriteProblems};
use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, Detach};
use crate::dead_letters::store::{
    DeadLetterPage, DeadLetterStatus, DeadLetterView, DeadLetters, RetryAllReport,
};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `PENDING`, `RETRIED` or `IGNORED`.
    status: Option<String>,
    /// 1 to 100, 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/v1/admin/failed-events?status&limit&cursor`: newest first.
#[utoipa::path(get, path = "/api/v1/admin/failed-events", tag = "admin", params(ListQuery),
    responses((status = 200, description = "Dead letters, newest first", body = DeadLetterPage), CommonProblems))]
pub async fn list(
    State(dead_letters): State<DeadLetters>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let status = query
        .status
        .map(|s| s.to_ascii_uppercase().parse::<DeadLetterStatus>())
        .transpose()
        .map_err(|_| ApiError::Validation("status must be PENDING, RETRIED or IGNORED".into()))?;
    let limit = super::page_limit(query.limit)?;
    let before = super::page_cursor(query.cursor)?;
    Ok(Json(dead_letters.list(status, limit, before).await?))
}

/// `POST /api/v1/admin/failed-events/{id}/retry`: re-publish to the original topic.
#[utoipa::path(post, path = "/api/v1/admin/failed-events/{id}/retry", tag = "admin",
    params(("id" = String, Path, description = "The failed event's id")),
    responses((status = 200, description = "Re-published, now RETRIED", body = DeadLetterView), CommonProblems, WriteProblems))]
pub async fn retry(
    State(detach): State<Detach>,
    State(dead_letters): State<DeadLetters>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let id = failed_event_id(&id)?;
    Ok(Json(
        detach
            .run(async move { dead_letters.retry(id).await })
            .await?,
    ))
}

/// `POST /api/v1/admin/failed-events/retry-all`: retry every one `PENDING` at the start.
///
/// Re-publishes the dead letters that are `PENDING` when the call starts (ids up to the
/// largest one then) and marks them `RETRIED`. A record that fails again comes back as a
/// new `PENDING` dead letter, left for the next call.
#[utoipa::path(post, path = "/api/v1/admin/failed-events/retry-all", tag = "admin",
    responses((status = 200, description = "How many were re-published", body = RetryAllReport), CommonProblems))]
pub async fn retry_all(
    State(detach): State<Detach>,
    State(dead_letters): State<DeadLetters>,
) -> Result<Json<RetryAllReport>, ApiError> {
    Ok(Json(
        detach
            .run(async move { dead_letters.retry_all().await })
            .await?,
    ))
}

/// `POST /api/v1/admin/failed-events/{id}/ignore`: keep it, never apply it.
#[utoipa::path(post, path = "/api/v1/admin/failed-events/{id}/ignore", tag = "admin",
    params(("id" = String, Path, description = "The failed event's id")),
    responses((status = 200, description = "Now IGNORED", body = DeadLetterView), CommonProblems))]
pub async fn ignore(
    State(detach): State<Detach>,
    State(dead_letters): State<DeadLetters>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let id = failed_event_id(&id)?;
    Ok(Json(
        detach
            .run(async move { dead_letters.ignore(id).await })
            .await?,
    ))
}

fn failed_event_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::Validation("the failed event id is a number".into()))
}
