//! Kafka clients (rdkafka, its bundled librdkafka): the producer, consumers and topic
//! creation. What runs on them lives in [`crate::outbox`], [`crate::consumers`] and
//! [`crate::dlt`].

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, ClientContext, Statistics};

use crate::configuration::KafkaSettings;

fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("socket.keepalive.enable", "true")
        // Small requests leave at once: with Nagle's algorithm on (librdkafka's default)
        // a produce or fetch could wait for the peer's delayed ACK, tens of milliseconds.
        .set("socket.nagle.disable", "true")
        // Tansu was seen to leave a request unanswered (a consumer's Fetch, during a
        // drain): give up on it after 10 s rather than librdkafka's 60, and ask again.
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "2000");
    config
}

/// The producer of the dead-letter publisher and the admin retry: idempotent (no
/// duplicates from its own retries) with `acks=all`; a record not acknowledged within
/// the delivery timeout fails, and its caller retries it.
pub fn producer(settings: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    idempotent(settings)
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .create()
        .context("creating the Kafka producer")
}

/// The outbox relay's producer: idempotent with `acks=all` like [`producer`], and its
/// records never time out (`message.timeout.ms=0`) and leave no gap
/// (`enable.gapless.guarantee`). The relay hands it every record of a key at once and
/// relies on the order it keeps them in, which holds only while the producer drops no
/// record from the middle of a key's series:
/// - a record that times out is dropped while later ones may still be written (and
///   librdkafka then bumps the producer's epoch, which Tansu's storage does not take:
///   every later produce fails until the producer is replaced); with no timeout the
///   relay watches progress itself ([`crate::outbox::relay`]);
/// - any other failure that could leave a gap fails the producer for good instead, and
///   the relay replaces it and publishes again from its first unacknowledged record.
pub fn relay_producer(settings: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    idempotent(settings)
        .set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true")
        .create()
        .context("creating the outbox relay's Kafka producer")
}

fn idempotent(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // No linger: what is queued while a request is in flight is sent together anyway,
        // and a lone record (a dead letter, a quiet relay's one event) leaves at once.
        .set("linger.ms", "0");
    config
}

/// Puts a producer from `build` in `slot` (the relay's or a dead-letter publisher's,
/// when theirs failed for good); false when none could be built, and `slot` is left as
/// it was. The old one is dropped, which fails the records it still holds.
pub fn replace_producer(
    slot: &mut FutureProducer,
    build: impl FnOnce() -> anyhow::Result<FutureProducer>,
) -> bool {
    match build() {
        Ok(fresh) => {
            let old = std::mem::replace(slot, fresh);
            // Dropping a producer purges and flushes it, which may block for a while: not
            // on a worker.
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

/// Reports the partitions each rebalance leaves the consumer (and logs them): a load run
/// waits on it before it measures, and an operator sees a consumer without any.
impl ConsumerContext for LagReporter {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(
                    consumer = self.name,
                    partitions = partitions.count(),
                    "partitions assigned"
                );
                crate::telemetry::metrics::consumer_partitions(self.name, partitions.count());
            }
            Rebalance::Revoke(_) => crate::telemetry::metrics::consumer_partitions(self.name, 0),
            Rebalance::Error(e) => {
                tracing::warn!(consumer = self.name, error = %e, "rebalance failed")
            }
        }
    }
}

/// The consumers the service runs.
pub type WalletConsumer = StreamConsumer<LagReporter>;

/// How often librdkafka reports statistics (consumer lag).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// A consumer in `group` with manual commits: an offset is committed only after the
/// record's effect is durable. `name` labels its metrics; `fetch_wait` is its
/// `fetch.wait.max.ms` (see [`KafkaSettings::fetch_wait`]).
pub fn consumer(
    settings: &KafkaSettings,
    name: &'static str,
    group: &str,
    topics: &[&str],
    fetch_wait: Duration,
) -> anyhow::Result<WalletConsumer> {
    let consumer: WalletConsumer = client_config(settings)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
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
