//! Kafka clients (rdkafka, its bundled librdkafka): the producer, consumers and topic
//! creation. What runs on them lives in [`crate::outbox`], [`crate::consumers`] and
//! [`crate::dlt`].

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, ClientContext, Statistics};

use crate::configuration::KafkaSettings;

fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.max.ms", "2000");
    config
}

/// The producer of the relay, the dead-letter publisher and the admin retry: idempotent
/// (no duplicates from its own retries) with `acks=all`.
pub fn producer(settings: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    client_config(settings)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // No linger: the relay sends a user's events one after the other, each once the
        // one before is acknowledged, so a linger is paid once per event of a busy user
        // (5 ms drained one user's backlog at about 160 events/s, 0 ms at about 1,400).
        // Records queued while a request is in flight are still sent together.
        .set("linger.ms", "0")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .create()
        .context("creating the Kafka producer")
}

/// Puts a new producer in `slot` (the relay's or a dead-letter publisher's, when theirs
/// failed for good); false when none could be built, and `slot` is left as it was.
pub fn replace_producer(slot: &mut FutureProducer, settings: &KafkaSettings) -> bool {
    match producer(settings) {
        Ok(fresh) => {
            let old = std::mem::replace(slot, fresh);
            // Dropping a producer flushes it, which may block for a while: not on a worker.
            tokio::task::spawn_blocking(move || drop(old));
            true
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not build a new Kafka producer");
            false
        }
    }
}

/// The consumers' client context: reports consumer lag from librdkafka's statistics.
pub struct LagReporter {
    name: &'static str,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // librdkafka reports -1 for partitions it does not consume.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    crate::telemetry::metrics::consumer_lag(
                        self.name,
                        *partition,
                        stats.consumer_lag,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for LagReporter {}

/// The consumers the service runs.
pub type WalletConsumer = StreamConsumer<LagReporter>;

/// How often librdkafka reports statistics (consumer lag).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// A consumer in `group` with manual commits: an offset is committed only after the
/// record's effect is durable. `name` labels its metrics.
pub fn consumer(
    settings: &KafkaSettings,
    name: &'static str,
    group: &str,
    topics: &[&str],
) -> anyhow::Result<WalletConsumer> {
    let consumer: WalletConsumer = client_config(settings)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(LagReporter { name })
        .context("creating a Kafka consumer")?;
    consumer.subscribe(topics).context("subscribing")?;
    Ok(consumer)
}

/// Creates the events and requests topics and their dead-letter topics when missing.
pub async fn ensure_topics(settings: &KafkaSettings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings)
        .create()
        .context("creating the Kafka admin client")?;
    let names = [
        settings.events_topic.clone(),
        KafkaSettings::dlt(&settings.events_topic),
        settings.requests_topic.clone(),
        KafkaSettings::dlt(&settings.requests_topic),
    ];
    let topics: Vec<_> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
