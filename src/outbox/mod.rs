//! The transactional outbox: events are rows written in the payment's own transaction,
//! so there is no event without its payment and no payment without its event. The
//! [`relay`] publishes them.

pub mod relay;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use crate::domain::events::Event;

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
    event: &Event,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    crate::store::inserted(append_many(conn, std::slice::from_ref(event), now).await)
}

/// Appends events in one statement, in order, inside the caller's transaction.
pub async fn append_many(
    conn: &mut MySqlConnection,
    events: &[Event],
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
                .push_bind(event.event_id())
                .push_bind(event.event_type())
                .push_bind(event.user_id())
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
    pub status: OutboxStatus,
    /// Rows not yet acknowledged by the broker.
    pub pending: i64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_pending_ms: i64,
    /// Time since the broker last acknowledged an event of this outbox (any relay's),
    /// in milliseconds; absent when none ever was.
    pub last_published_ms: Option<i64>,
}

/// Whether the events leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Nothing waits longer than the stall threshold.
    Ok,
    /// Events wait longer than the threshold, but the broker acknowledged some within it:
    /// the relay is behind and catching up.
    Lagging,
    /// Events wait and nothing was published for longer than the threshold.
    Stalled,
}

impl Backlog {
    fn judge(
        pending: i64,
        oldest_pending_ms: i64,
        last_published_ms: Option<i64>,
        stall_after: Duration,
    ) -> Self {
        let threshold = i64::try_from(stall_after.as_millis()).unwrap_or(i64::MAX);
        let status = if pending == 0 || oldest_pending_ms <= threshold {
            OutboxStatus::Ok
        } else if last_published_ms.is_some_and(|ms| ms <= threshold) {
            OutboxStatus::Lagging
        } else {
            OutboxStatus::Stalled
        };
        Self {
            status,
            pending,
            oldest_pending_ms,
            last_published_ms,
        }
    }
}

/// The outbox's backlog, judged against `stall_after`. One statement: the pending count
/// and oldest row from the unsent index, the last publication from its other end.
pub async fn backlog(pool: &MySqlPool, stall_after: Duration) -> Result<Backlog, sqlx::Error> {
    let (pending, oldest, last_sent): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at), \
             (SELECT MAX(sent_at) FROM outbox_events) \
             FROM outbox_events WHERE sent_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
    let now = Utc::now();
    let age = |at: DateTime<Utc>| (now - at).num_milliseconds().max(0);
    Ok(Backlog::judge(
        pending,
        oldest.map(age).unwrap_or(0),
        last_sent.map(age),
        stall_after,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn an_empty_or_young_backlog_is_ok() {
        assert_eq!(Backlog::judge(0, 0, None, MINUTE).status, OutboxStatus::Ok);
        assert_eq!(
            Backlog::judge(500, 59_000, None, MINUTE).status,
            OutboxStatus::Ok
        );
    }

    #[test]
    fn an_old_backlog_lags_while_events_leave_and_stalls_when_none_do() {
        let lagging = Backlog::judge(500, 90_000, Some(200), MINUTE);
        assert_eq!(lagging.status, OutboxStatus::Lagging);
        let stalled = Backlog::judge(500, 90_000, Some(61_000), MINUTE);
        assert_eq!(stalled.status, OutboxStatus::Stalled);
        let never = Backlog::judge(500, 90_000, None, MINUTE);
        assert_eq!(never.status, OutboxStatus::Stalled);
    }
}
