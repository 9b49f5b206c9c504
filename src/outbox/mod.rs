//! The transactional outbox: events are rows written in the payment's own transaction,
//! so there is no event without its payment and no payment without its event. The
//! [`relay`] publishes them.

pub mod relay;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use crate::events::PaymentEvent;

/// An unsent outbox row.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: u64,
    pub event_id: String,
    pub event_type: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub aggregate_id: String,
    pub payload: String,
}

/// Appends `event` to the outbox inside the caller's transaction. Returns false when an
/// event with the same id is already there.
pub async fn append(
    conn: &mut MySqlConnection,
    event: &PaymentEvent,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    match append_many(conn, std::slice::from_ref(event), now).await {
        Ok(()) => Ok(true),
        Err(e) if crate::store::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Appends events in one statement, in order, inside the caller's transaction.
pub async fn append_many(
    conn: &mut MySqlConnection,
    events: &[PaymentEvent],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let payloads = events
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut query = sqlx::QueryBuilder::new(
        "INSERT INTO outbox_events (event_id, event_type, aggregate_id, payload, created_at) ",
    );
    query.push_values(
        events.iter().zip(payloads),
        |mut values, (event, payload)| {
            values
                .push_bind(&event.event_id)
                .push_bind(&event.event_type)
                .push_bind(&event.user_id)
                .push_bind(payload)
                .push_bind(now);
        },
    );
    query.build().execute(conn).await?;
    Ok(())
}

/// Locks up to `limit` unsent rows, oldest first, skipping rows another relay holds.
pub async fn claim(conn: &mut MySqlConnection, limit: u32) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, event_type, aggregate_id, payload FROM outbox_events \
         WHERE sent_at IS NULL ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Of the claimed `rows` (oldest first), those that may be published now: for each key,
/// the claimed rows before the first unsent row of that key this relay does not hold.
///
/// Such a row is held by another relay (`SKIP LOCKED` let each of us skip the other's
/// rows), or was committed after our claim. Publishing our later rows of its key first
/// would overtake it on the topic, so they wait for a later pass. Rows are marked sent
/// only after the broker's ack, so a row seen here as sent really is on the topic. The
/// read does not lock: it sees the last committed state and waits for no one.
pub async fn publishable(
    conn: &mut MySqlConnection,
    rows: Vec<OutboxRow>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let Some(last) = rows.iter().map(|row| row.id).max() else {
        return Ok(rows);
    };
    // Only rows older than our newest can come before ours: few, since we claimed the
    // oldest unsent rows that nobody else held.
    let unsent: Vec<(u64, crate::store::ExactText)> = sqlx::query_as(
        "SELECT id, aggregate_id FROM outbox_events WHERE sent_at IS NULL AND id < ? ORDER BY id",
    )
    .bind(last)
    .fetch_all(conn)
    .await?;
    let claimed: HashSet<u64> = rows.iter().map(|row| row.id).collect();
    let mut first_foreign: HashMap<String, u64> = HashMap::new();
    for (id, key) in unsent {
        if !claimed.contains(&id) {
            first_foreign.entry(key.into()).or_insert(id);
        }
    }
    Ok(rows
        .into_iter()
        .filter(|row| {
            first_foreign
                .get(&row.aggregate_id)
                .is_none_or(|&foreign| row.id < foreign)
        })
        .collect())
}

/// Marks rows sent (the broker acknowledged them).
pub async fn mark_sent(
    conn: &mut MySqlConnection,
    ids: &[u64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut query = sqlx::QueryBuilder::new("UPDATE outbox_events SET sent_at = ");
    query.push_bind(now).push(" WHERE id IN (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    list.push_unseparated(")");
    query.build().execute(conn).await?;
    Ok(())
}

/// How far the relay is behind.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    /// Rows not yet acknowledged by the broker.
    pub pending: i64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_pending_ms: i64,
}

pub async fn backlog(pool: &MySqlPool) -> Result<Backlog, sqlx::Error> {
    let (pending, oldest): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox_events WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await?;
    let oldest_pending_ms = oldest
        .map(|at| (Utc::now() - at).num_milliseconds().max(0))
        .unwrap_or(0);
    Ok(Backlog {
        pending,
        oldest_pending_ms,
    })
}
