//! Kafka clients (rdkafka, its bundled librdkafka): the producer, consumers and topic
//! creation. What runs on them lives in [`crate::outbox`], [`crate::consumers`] and
//! [`crate::dead_letters`].

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::{oneshot, Notify};

use crate::configuration::KafkaSettings;

pub mod wakeups;

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
pub fn producer(settings: &KafkaSettings) -> anyhow::Result<WalletProducer> {
    let producer: FutureProducer = idempotent(settings)
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        .create()
        .context("creating the Kafka producer")?;
    Ok(producer.into())
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
pub fn relay_producer(settings: &KafkaSettings) -> anyhow::Result<WalletProducer> {
    let producer: FutureProducer = idempotent(settings)
        .set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true")
        .create()
        .context("creating the outbox relay's Kafka producer")?;
    Ok(producer.into())
}

/// A producer the service runs, shared by its clones. The last clone dropped closes it
/// on a thread of its own: librdkafka purges it, flushes it (up to half a second) and
/// then waits for its own threads, which may take a while when the broker is away. So a
/// close holds only that thread, never a runtime worker, nor a runtime's shutdown
/// (which waits for every worker and blocking task).
#[derive(Clone)]
pub struct WalletProducer(Arc<LastHandle>);

struct LastHandle(Option<FutureProducer>);

impl From<FutureProducer> for WalletProducer {
    fn from(producer: FutureProducer) -> Self {
        Self(Arc::new(LastHandle(Some(producer))))
    }
}

impl Deref for WalletProducer {
    type Target = FutureProducer;

    fn deref(&self) -> &Self::Target {
        self.0
             .0
            .as_ref()
            .expect("a producer is closed only when its last clone is dropped")
    }
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            drop(close_on_thread(move || drop(producer)));
        }
    }
}

/// Runs `close` (a librdkafka client's drop) on a thread of its own; the receiver
/// resolves when it is done. Without a thread to spare, `close` is dropped in place,
/// and the client with it.
fn close_on_thread(close: impl FnOnce() + Send + 'static) -> oneshot::Receiver<()> {
    let (done, closed) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            close();
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to close a Kafka client on; closed in place");
    }
    closed
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
/// it was. The old one is dropped, which fails the records it still holds (closed on a
/// thread of its own, [`WalletProducer`]).
pub fn replace_producer(
    slot: &mut WalletProducer,
    build: impl FnOnce() -> anyhow::Result<WalletProducer>,
) -> bool {
    match build() {
        Ok(fresh) => {
            *slot = fresh;
            true
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not build a new Kafka producer");
            false
        }
    }
}

/// The consumers' client context: reports consumer lag from librdkafka's statistics,
/// and tells the consume loop of every assignment ([`WalletConsumer::assigned`]) and
/// whether records wait ([`WalletConsumer::behind`]).
pub struct LagReporter {
    name: &'static str,
    assigned: Notify,
    behind: AtomicBool,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        let mut behind = false;
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // librdkafka reports -1 for partitions it does not consume.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    crate::telemetry::metrics::consumer_lag(
                        self.name,
                        *partition,
                        stats.consumer_lag,
                    );
                    behind |= stats.consumer_lag > 0;
                }
            }
        }
        self.behind.store(behind, Ordering::Relaxed);
    }
}

/// Reports the partitions each rebalance leaves the consumer (and logs them): a load run
/// waits on it before it measures, and an operator sees a consumer without any.
impl ConsumerContext for LagReporter {
    /// The eager protocol's rebalance (the consumers keep librdkafka's default assignors,
    /// range and round-robin, both eager), without rdkafka's default question to
    /// librdkafka which protocol is in use, and no call at all once the group has
    /// terminated. Both the question and an assignment are requests to the consumer
    /// group that wait for an answer without a bound, and a group that terminates while
    /// one waits (a consumer closing while a rebalance was under way) drops it
    /// unanswered (confluentinc/librdkafka#4041, #4884). This takes away the question;
    /// an assignment can still meet a group terminating at that moment, which is why a
    /// consumer closes on a thread of its own ([`WalletConsumer`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        if !consumer.closed() {
            let applied = match &rebalance {
                Rebalance::Assign(partitions) => consumer.assign(partitions),
                Rebalance::Revoke(_) | Rebalance::Error(_) => consumer.unassign(),
            };
            if let Err(e) = applied {
                tracing::warn!(consumer = self.name, error = %e, "could not apply a rebalance");
            }
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(
                    consumer = self.name,
                    partitions = partitions.count(),
                    "partitions assigned"
                );
                crate::telemetry::metrics::consumer_partitions(self.name, partitions.count());
                self.assigned.notify_one();
            }
            Rebalance::Revoke(_) => crate::telemetry::metrics::consumer_partitions(self.name, 0),
            Rebalance::Error(e) => {
                tracing::warn!(consumer = self.name, error = %e, "rebalance failed")
            }
        }
    }
}

/// A consumer the service runs. Closing it (leaving its group, which librdkafka does
/// when the consumer is dropped) happens on a thread of its own: it waits on the broker
/// and on librdkafka, so it may take a while, and a close that never ends holds only
/// that thread, never a runtime worker or the service's shutdown.
pub struct WalletConsumer {
    inner: Option<Arc<StreamConsumer<LagReporter>>>,
}

impl WalletConsumer {
    /// Leaves the group, so its other members take this consumer's partitions at once
    /// rather than after the session timeout; waits at most `within` for it. False when
    /// the close did not finish in time (it goes on in the background).
    pub async fn close(mut self, within: Duration) -> bool {
        let closed = self.close_in_background();
        matches!(tokio::time::timeout(within, closed).await, Ok(Ok(())))
    }

    fn close_in_background(&mut self) -> oneshot::Receiver<()> {
        match self.inner.take() {
            Some(consumer) => close_on_thread(move || drop(consumer)),
            None => oneshot::channel().1,
        }
    }

    /// Resolves at the next rebalance that assigns partitions (one that came before it
    /// is awaited leaves a permit): records may wait on them, which a consumer that
    /// stopped fetching should fetch ([`wakeups`]).
    pub fn assigned(&self) -> tokio::sync::futures::Notified<'_> {
        self.context().assigned.notified()
    }

    /// True when librdkafka's latest statistics (every few seconds) had records past the
    /// committed offset of a partition this consumer has: the broker's high watermark as
    /// last seen, so records written since a pause do not count.
    pub fn behind(&self) -> bool {
        self.context().behind.load(Ordering::Relaxed)
    }

    /// Pauses or resumes every partition assigned: a paused consumer sends no fetch
    /// ([`wakeups`]). Partitions a later rebalance assigns are fetched.
    ///
    /// librdkafka's network thread notices a resume only when something else wakes it,
    /// up to a second later. A resume also asks the broker, in the background, for the
    /// first partition's earliest offset by time (one small request, and one Tansu
    /// answers on every PostgreSQL version, unlike its latest-offset query), which
    /// wakes that thread: the fetch starts at once.
    pub fn set_fetching(&self, fetching: bool) -> KafkaResult<()> {
        let assigned = self.assignment()?;
        if !fetching {
            return self.pause(&assigned);
        }
        self.resume(&assigned)?;
        let partitions = assigned.elements();
        let (Some(first), Some(consumer)) = (partitions.first(), self.inner.clone()) else {
            return Ok(());
        };
        let mut earliest = TopicPartitionList::new();
        earliest.add_partition_offset(first.topic(), first.partition(), Offset::Offset(0))?;
        tokio::task::spawn_blocking(move || {
            let _ = consumer.offsets_for_times(earliest, WAKE_WITHIN);
        });
        Ok(())
    }
}

/// Longest the request that wakes librdkafka's network thread may take
/// ([`WalletConsumer::set_fetching`]).
const WAKE_WITHIN: Duration = Duration::from_secs(2);

impl Deref for WalletConsumer {
    type Target = StreamConsumer<LagReporter>;

    fn deref(&self) -> &Self::Target {
        self.inner
            .as_ref()
            .expect("a consumer is used only until it is closed")
    }
}

impl Drop for WalletConsumer {
    fn drop(&mut self) {
        // Nobody waits for this close.
        drop(self.close_in_background());
    }
}

/// How often librdkafka reports statistics (consumer lag).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// How often a consumer refreshes its topics' metadata.
const TOPIC_REFRESH_MS: &str = "5000";

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
    let consumer: StreamConsumer<LagReporter> = client_config(settings)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // A subscribed topic that does not exist yet (the service creates its topics
        // while its consumers start, or an operator creates them later) is looked up
        // again only at this interval: librdkafka's 5 minutes would leave such a
        // consumer idle that long.
        .set("topic.metadata.refresh.interval.ms", TOPIC_REFRESH_MS)
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(LagReporter {
            name,
            assigned: Notify::new(),
            behind: AtomicBool::new(false),
        })
        .context("creating a Kafka consumer")?;
    consumer.subscribe(topics).context("subscribing")?;
    Ok(WalletConsumer {
        inner: Some(Arc::new(consumer)),
    })
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
