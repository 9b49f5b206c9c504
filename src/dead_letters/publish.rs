//! Publishing a record that keeps failing to `<topic>.DLT`, with the provenance headers
//! Spring Kafka's `DeadLetterPublishingRecoverer` writes, so existing tooling reads them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureRecord, Producer};

use crate::configuration::KafkaSettings;
use crate::kafka::wakeups::Wakeups;
use crate::kafka::WalletProducer;
use crate::telemetry::metrics;

pub const ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
/// 4-byte big-endian integer, as Spring writes it.
pub const ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
/// 8-byte big-endian integer.
pub const ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
/// 8-byte big-endian integer, milliseconds since the epoch.
pub const ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
pub const ORIGINAL_CONSUMER_GROUP: &str = "kafka_dlt-original-consumer-group";
pub const EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";
pub const EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
/// 4-byte big-endian integer: how many times the record was tried.
pub const DELIVERY_ATTEMPT: &str = "kafka_deliveryAttempt";

/// Publishes dead letters. A consumer waits for its dead letter to be taken before it
/// commits the record, so a producer that failed for good would stop the consumer for
/// good: this one replaces it ([`DeadLetterPublisher::heal`]).
#[derive(Clone)]
pub struct DeadLetterPublisher {
    producer: WalletProducer,
    /// To build a new producer.
    kafka: KafkaSettings,
    group: String,
    timeout: Duration,
    /// Told when a dead letter was published, to wake the collector.
    published: Option<Arc<Wakeups>>,
}

/// Why a record is dead.
pub struct Failure<'a> {
    /// `poison` (could not be read) or `failed` (kept failing).
    pub kind: &'a str,
    pub message: String,
    pub attempts: u32,
}

impl DeadLetterPublisher {
    /// Publishes with `producer` (its delivery timeout from `kafka`) for consumer `group`.
    pub fn new(kafka: &KafkaSettings, producer: WalletProducer, group: impl Into<String>) -> Self {
        Self {
            producer,
            kafka: kafka.clone(),
            group: group.into(),
            timeout: kafka.delivery_timeout,
            published: None,
        }
    }

    /// Tells `wakeups` of every dead letter published.
    pub fn announcing(mut self, wakeups: Arc<Wakeups>) -> Self {
        self.published = Some(wakeups);
        self
    }

    /// Replaces the producer when librdkafka reports it fatally failed (an idempotent
    /// producer whose sequence the broker refused never recovers by itself), or when
    /// `error` is a record that timed out: librdkafka then bumps the producer's epoch by
    /// itself, which Tansu's storage refuses on every later produce (a new producer
    /// starts with an id of its own). The next attempt publishes with the new one.
    fn heal(&mut self, error: &KafkaError) {
        let fatal = self.producer.client().fatal_error();
        let timed_out = error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut);
        if fatal.is_none() && !timed_out {
            return;
        }
        if crate::kafka::replace_producer(&mut self.producer, || {
            crate::kafka::producer(&self.kafka)
        }) {
            tracing::warn!(?fatal, timed_out, group = %self.group, "replaced the dead-letter publisher's Kafka producer");
            metrics::dead_letter_producer_replaced();
        }
    }

    /// Publishes `record` to its dead-letter topic and waits for the broker's ack.
    pub async fn publish(
        &mut self,
        record: &OwnedMessage,
        failure: Failure<'_>,
    ) -> anyhow::Result<()> {
        let topic = KafkaSettings::dlt(record.topic());
        let partition = record.partition().to_be_bytes();
        let offset = record.offset().to_be_bytes();
        let timestamp = record.timestamp().to_millis().unwrap_or(0).to_be_bytes();
        let attempts = (failure.attempts as i32).to_be_bytes();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = record.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let fqcn = format!("wallet::{}", failure.kind);
        let headers = headers
            .insert(text(ORIGINAL_TOPIC, record.topic()))
            .insert(bytes(ORIGINAL_PARTITION, &partition))
            .insert(bytes(ORIGINAL_OFFSET, &offset))
            .insert(bytes(ORIGINAL_TIMESTAMP, &timestamp))
            .insert(text(ORIGINAL_CONSUMER_GROUP, &self.group))
            .insert(text(EXCEPTION_MESSAGE, &failure.message))
            .insert(text(EXCEPTION_FQCN, &fqcn))
            .insert(bytes(DELIVERY_ATTEMPT, &attempts));
        let mut dead = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = record.key() {
            dead = dead.key(key);
        }
        if let Some(payload) = record.payload() {
            dead = dead.payload(payload);
        }
        let sent = self.producer.send(dead, self.timeout).await;
        if let Err((e, _)) = sent {
            self.heal(&e);
            return Err(e).with_context(|| format!("publishing to {topic}"));
        }
        if let Some(wakeups) = &self.published {
            wakeups.written(&topic);
        }
        Ok(())
    }
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

fn bytes<'a>(key: &'a str, value: &'a [u8]) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value),
    }
}

/// Reads a header as UTF-8 text.
pub fn header_text(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()?
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads a big-endian integer header (4 or 8 bytes), as Spring writes them.
pub fn header_int(record: &OwnedMessage, name: &str) -> Option<i64> {
    let value = record
        .headers()?
        .iter()
        .filter(|h| h.key == name)
        .last()?
        .value?;
    match value.len() {
        4 => Some(i32::from_be_bytes(value.try_into().ok()?) as i64),
        8 => Some(i64::from_be_bytes(value.try_into().ok()?)),
        _ => None,
    }
}
