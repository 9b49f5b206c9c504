//! The operators' side of dead letters: the records stored in `failed_events` (by
//! [`crate::consumers::dead_letters`]) are listed, retried (re-published to their
//! original topic) or ignored (kept, never applied).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use sqlx::{MySqlConnection, MySqlPool};

use crate::kafka::wakeups::Wakeups;
use crate::kafka::WalletProducer;
use crate::support::clock::{now, timestamp};
use crate::support::pagination::paginate;

crate::support::text_enum::text_enum! {
    /// Where a dead letter stands.
    pub enum DeadLetterStatus {
        /// Stored, waiting for an operator.
        Pending = "PENDING",
        /// Re-published to its original topic.
        Retried = "RETRIED",
        /// Kept for the record, never applied.
        Ignored = "IGNORED",
    }
}

/// A stored dead letter.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub id: u64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub dlt_topic: String,
    pub event_key: Option<String>,
    pub payload: String,
    /// JSON object of header name → value (integers Spring writes as bytes, as numbers).
    pub headers: String,
    pub error: String,
    pub attempts: i32,
    pub status: DeadLetterStatus,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub id: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub dlt_topic: String,
    pub key: Option<String>,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
    pub error: String,
    pub attempts: i32,
    pub status: DeadLetterStatus,
    pub first_seen_at: String,
    pub last_seen_at: String,
    pub updated_at: String,
}

impl From<&DeadLetterRow> for DeadLetterView {
    fn from(row: &DeadLetterRow) -> Self {
        Self {
            id: row.id.to_string(),
            source_topic: row.source_topic.clone(),
            source_partition: row.source_partition,
            source_offset: row.source_offset,
            dlt_topic: row.dlt_topic.clone(),
            key: row.event_key.clone(),
            payload: row.payload.clone(),
            headers: serde_json::from_str(&row.headers).unwrap_or_default(),
            error: row.error.clone(),
            attempts: row.attempts,
            status: row.status,
            first_seen_at: timestamp(row.first_seen_at),
            last_seen_at: timestamp(row.last_seen_at),
            updated_at: timestamp(row.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryAllReport {
    /// Dead letters re-published and marked `RETRIED` by this call.
    pub retried: u64,
}

/// The operators' side of dead letters; cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    db: MySqlPool,
    producer: WalletProducer,
    timeout: Duration,
    /// Told when a dead letter was published again, to wake its topic's consumer.
    published: Option<Arc<Wakeups>>,
}

/// Rows re-published per transaction by retry-all.
const RETRY_BATCH: u32 = 100;

impl DeadLetters {
    pub fn new(db: MySqlPool, producer: WalletProducer, timeout: Duration) -> Self {
        Self {
            db,
            producer,
            timeout,
            published: None,
        }
    }

    /// Tells `wakeups` of every dead letter published again.
    pub fn announcing(mut self, wakeups: Arc<Wakeups>) -> Self {
        self.published = Some(wakeups);
        self
    }

    /// Dead letters, newest first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<DeadLetterStatus>,
        limit: u32,
        before: Option<u64>,
    ) -> Result<DeadLetterPage, Error> {
        let rows: Vec<DeadLetterRow> = sqlx::query_as(
            "SELECT * FROM failed_events WHERE (? IS NULL OR status = ?) AND id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(status)
        .bind(status)
        .bind(before.unwrap_or(u64::MAX))
        .bind(limit + 1)
        .fetch_all(&self.db)
        .await
        .map_err(unavailable)?;
        let (items, next_cursor) = paginate(
            &rows,
            limit,
            |row| DeadLetterView::from(row),
            |event| &event.id,
        );
        Ok(DeadLetterPage { items, next_cursor })
    }

    /// Re-publishes one dead letter to its original topic and marks it `RETRIED`.
    pub async fn retry(&self, id: u64) -> Result<DeadLetterView, Error> {
        let mut tx = self.db.begin().await.map_err(unavailable)?;
        let row = lock(&mut tx, id).await?;
        if row.status == DeadLetterStatus::Ignored {
            return Err(Error::Ignored);
        }
        self.republish(&row).await.map_err(unavailable)?;
        let row = mark(&mut tx, row, DeadLetterStatus::Retried).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok((&row).into())
    }

    /// Retries the dead letters that were `PENDING` when the call started, in batches.
    ///
    /// Bounded by the largest id read at the start: a re-published record that fails
    /// again comes back as a new `PENDING` row (a new offset, a new id), and retrying
    /// those too would chase its own output for as long as the cause persists. They wait
    /// for the next call.
    pub async fn retry_all(&self) -> Result<RetryAllReport, Error> {
        let last: Option<u64> = sqlx::query_scalar("SELECT MAX(id) FROM failed_events")
            .fetch_one(&self.db)
            .await
            .map_err(unavailable)?;
        let Some(last) = last else {
            return Ok(RetryAllReport { retried: 0 });
        };
        let mut retried = 0;
        loop {
            let mut tx = self.db.begin().await.map_err(unavailable)?;
            let rows: Vec<DeadLetterRow> = sqlx::query_as(
                "SELECT * FROM failed_events WHERE status = ? AND id <= ? \
                 ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
            )
            .bind(DeadLetterStatus::Pending)
            .bind(last)
            .bind(RETRY_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            if rows.is_empty() {
                return Ok(RetryAllReport { retried });
            }
            let count = rows.len();
            for row in rows {
                self.republish(&row).await.map_err(unavailable)?;
                mark(&mut tx, row, DeadLetterStatus::Retried).await?;
            }
            tx.commit().await.map_err(unavailable)?;
            retried += count as u64;
        }
    }

    /// Marks a dead letter `IGNORED`: kept for the record, never applied.
    pub async fn ignore(&self, id: u64) -> Result<DeadLetterView, Error> {
        let mut tx = self.db.begin().await.map_err(unavailable)?;
        let row = lock(&mut tx, id).await?;
        let row = mark(&mut tx, row, DeadLetterStatus::Ignored).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok((&row).into())
    }

    async fn republish(&self, row: &DeadLetterRow) -> anyhow::Result<()> {
        let stored: BTreeMap<String, String> =
            serde_json::from_str(&row.headers).unwrap_or_default();
        let mut headers = OwnedHeaders::new();
        // The record's own headers go back; the dead-letter provenance does not.
        for (key, value) in stored.iter().filter(|(k, _)| !k.starts_with("kafka_")) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(&row.source_topic)
            .payload(row.payload.as_bytes())
            .headers(headers);
        if let Some(key) = &row.event_key {
            record = record.key(key.as_bytes());
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map_err(|(e, _)| e)
            .with_context(|| {
                format!(
                    "re-publishing failed event {} to {}",
                    row.id, row.source_topic
                )
            })?;
        if let Some(wakeups) = &self.published {
            wakeups.written(&row.source_topic);
        }
        Ok(())
    }
}

async fn lock(conn: &mut MySqlConnection, id: u64) -> Result<DeadLetterRow, Error> {
    sqlx::query_as("SELECT * FROM failed_events WHERE id = ? FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(unavailable)?
        .ok_or(Error::NotFound)
}

async fn mark(
    conn: &mut MySqlConnection,
    mut row: DeadLetterRow,
    status: DeadLetterStatus,
) -> Result<DeadLetterRow, Error> {
    let at = now();
    sqlx::query("UPDATE failed_events SET status = ?, updated_at = ? WHERE id = ?")
        .bind(status)
        .bind(at)
        .bind(row.id)
        .execute(conn)
        .await
        .map_err(unavailable)?;
    row.status = status;
    row.updated_at = at;
    Ok(row)
}

fn unavailable(e: impl Into<anyhow::Error>) -> Error {
    Error::Unavailable(e.into())
}

/// Why an operator's action on dead letters did not succeed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed event not found")]
    NotFound,
    #[error("the failed event was ignored; it is never applied")]
    Ignored,
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::DeadLetterStatus;
    use crate::support::text_enum::assert_same_text_everywhere;

    #[test]
    fn statuses_read_and_write_their_column_text() {
        assert_same_text_everywhere(DeadLetterStatus::ALL, |s| s.as_str());
    }
}
