//! Talking to the broker from the tests: producing records, reading a topic from the
//! beginning, waiting for the points to settle.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use wallet::configuration::{KafkaSettings, Settings};
use wallet::kafka::WalletConsumer;

use crate::support::servers::OwnServer;
use crate::support::{eventually, kafka_settings, TestApp};

/// How long a test waits for anything that crosses the broker.
pub const WAIT: Duration = Duration::from_secs(60);

/// A plain producer of the test's own.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces one record and waits for the broker's ack.
pub async fn produce(
    settings: &Settings,
    topic: &str,
    key: &str,
    payload: &str,
    headers: &[(&str, &str)],
) {
    let mut owned = OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    producer(&settings.kafka.brokers)
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker takes the record");
}

/// A broker of the test's own, to kill and restart, and settings that point at it.
pub async fn own_broker() -> (OwnServer, Settings) {
    let broker = OwnServer::broker();
    let mut settings = kafka_settings().await;
    settings.kafka.brokers = broker.address();
    (broker, settings)
}

/// A points consumer as the service builds it, for a test that runs the loop itself.
pub fn points_consumer(kafka: &KafkaSettings) -> WalletConsumer {
    wallet::kafka::consumer(
        kafka,
        "points",
        &kafka.points_group,
        &[&kafka.events_topic],
        kafka.fetch_wait,
    )
    .unwrap()
}

/// Every record of `topic` from the beginning, read by a group of the test's own, until
/// `count` records arrived or the wait ran out.
pub async fn read_topic(
    settings: &Settings,
    topic: &str,
    count: usize,
) -> Vec<(Vec<(String, Vec<u8>)>, Value)> {
    // The service's consumer (from the earliest offset, no commits), in a group of its
    // own: its close can never hold the test up.
    let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let kafka = &settings.kafka;
    let consumer =
        wallet::kafka::consumer(kafka, "reader", &group, &[topic], kafka.fetch_wait).unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while records.len() < count {
        let Ok(Ok(message)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let payload =
            serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or(Value::Null);
        records.push((headers, payload));
    }
    records
}

/// `POST /api/v1/admin/failed-events/{id}/{action}` for a listed failed event.
pub async fn failed_event(app: &TestApp, event: &Value, action: &str) -> crate::support::Reply {
    let id = event["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/admin/failed-events/{id}/{action}"),
        &json!({}),
    )
    .await
}

/// Waits until the outbox is drained and `user_id` holds `points`.
pub async fn drained_with_points(app: &TestApp, user_id: &str, points: i64) -> bool {
    eventually(WAIT, || async {
        app.unsent_events().await == 0 && app.points(user_id).await == points
    })
    .await
}

/// Waits until `group` has committed its offsets past every record now on `topic`: it
/// has handled all of them.
pub async fn group_caught_up(settings: &Settings, group: &str, topic: &str) -> bool {
    let consumer = offsets_reader(settings, group);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            let caught_up = (|| -> Option<bool> {
                let high = high_watermarks(&consumer, &topic)?;
                let mut wanted = TopicPartitionList::new();
                for partition in 0..high.len() as i32 {
                    wanted.add_partition(&topic, partition);
                }
                let committed = consumer
                    .committed_offsets(wanted, Duration::from_secs(5))
                    .ok()?;
                let mut all = true;
                for (partition, high) in (0..).zip(high) {
                    all &= match committed.find_partition(&topic, partition)?.offset() {
                        Offset::Offset(offset) => offset >= high,
                        _ => high == 0,
                    };
                }
                Some(all)
            })();
            if caught_up == Some(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    })
    .await
    .unwrap()
}

/// Waits until `app`'s points consumer has handled every record now on the events
/// topic: what it has not done by then, it will not do.
pub async fn points_caught_up(app: &TestApp) -> bool {
    let kafka = &app.settings.kafka;
    group_caught_up(&app.settings, &kafka.points_group, &kafka.events_topic).await
}

/// How many records `topic` holds now, over all its partitions.
pub async fn records_on(settings: &Settings, topic: &str) -> usize {
    let consumer = offsets_reader(settings, "records-on");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let high = high_watermarks(&consumer, &topic).expect("the topic's watermarks");
        high.into_iter().sum::<i64>() as usize
    })
    .await
    .unwrap()
}

fn offsets_reader(settings: &Settings, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // The relay's producer is not transactional, so the last stable offset is the
        // high watermark. Tansu's PostgreSQL engine answers the read_committed offset
        // query with SQL PostgreSQL 15 refuses (docs/design.md, "The development broker").
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap()
}

/// The high watermark of each partition of `topic`, by partition number.
fn high_watermarks(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i64>> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions = metadata.topics().first()?.partitions().len() as i32;
    (0..partitions)
        .map(|partition| {
            let (_, high) = consumer.fetch_watermarks(topic, partition, timeout).ok()?;
            Some(high)
        })
        .collect()
}
