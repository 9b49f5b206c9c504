//! The dead-letter consumer: stores every record of the `.DLT` topics in
//! `failed_events`, once per original record.

use std::collections::BTreeMap;

use rdkafka::message::{Headers, Message, OwnedMessage};
use sqlx::MySqlPool;

use crate::consumers::{HandlerError, RecordHandler};
use crate::dead_letters::publish::{
    header_int, header_text, DELIVERY_ATTEMPT, EXCEPTION_MESSAGE, ORIGINAL_OFFSET,
    ORIGINAL_PARTITION, ORIGINAL_TIMESTAMP, ORIGINAL_TOPIC,
};
use crate::dead_letters::store::DeadLetterStatus;
use crate::support::clock::now;

/// Stores dead letters.
pub struct DeadLetterCollector {
    pub db: MySqlPool,
}

impl RecordHandler for DeadLetterCollector {
    async fn handle(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let source_topic = header_text(record, ORIGINAL_TOPIC)
            .unwrap_or_else(|| record.topic().trim_end_matches(".DLT").to_owned());
        let source_partition =
            header_int(record, ORIGINAL_PARTITION).unwrap_or(record.partition() as i64);
        let source_offset = header_int(record, ORIGINAL_OFFSET).unwrap_or(record.offset());
        let error = header_text(record, EXCEPTION_MESSAGE).unwrap_or_default();
        let attempts = header_int(record, DELIVERY_ATTEMPT).unwrap_or(1);
        let headers = headers_json(record);
        let key = record
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let payload = record
            .payload()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let at = now();
        sqlx::query(
            "INSERT INTO failed_events (source_topic, source_partition, source_offset, dlt_topic, event_key, \
             payload, headers, error, attempts, status, first_seen_at, last_seen_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE last_seen_at = VALUES(last_seen_at)",
        )
        .bind(source_topic)
        .bind(source_partition)
        .bind(source_offset)
        .bind(record.topic())
        .bind(key)
        .bind(payload)
        .bind(headers)
        .bind(error)
        .bind(attempts)
        .bind(DeadLetterStatus::Pending)
        .bind(at)
        .bind(at)
        .bind(at)
        .execute(&self.db)
        .await
        .map_err(|e| HandlerError::Transient(e.into()))?;
        Ok(())
    }
}

/// Headers as a JSON object; Spring's binary integers become decimal strings.
fn headers_json(record: &OwnedMessage) -> String {
    let binary = [
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_TIMESTAMP,
        DELIVERY_ATTEMPT,
    ];
    let mut map = BTreeMap::new();
    if let Some(headers) = record.headers() {
        for header in headers.iter() {
            let value = if binary.contains(&header.key) {
                header_int(record, header.key)
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            } else {
                header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            map.insert(header.key.to_owned(), value);
        }
    }
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}
