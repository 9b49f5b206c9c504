//! The service's Kafka consumers on their own: they start when their topic appears after
//! them, and closing one (leaving its group) never holds its caller.

use std::time::{Duration, Instant};

use rdkafka::message::Message;

use crate::support::kafka::{own_broker, points_consumer, produce};
use crate::support::kafka_settings;

/// The service creates its topics in the background while its consumers start, so a
/// consumer may subscribe before its topic exists: it reads the topic's records within
/// seconds of the topic's creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_subscribed_before_its_topic_exists_reads_it_once_it_does() {
    let settings = kafka_settings().await;
    let kafka = &settings.kafka;
    let consumer = points_consumer(kafka);
    let (missing, found_missing) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(async move {
        let mut missing = Some(missing);
        loop {
            // Errors ("subscribed topic not available") until the topic exists.
            match consumer.recv().await {
                Ok(record) => return record.key().map(<[u8]>::to_vec),
                Err(_) => {
                    if let Some(missing) = missing.take() {
                        let _ = missing.send(());
                    }
                }
            }
        }
    });
    // The topic is created once the consumer has asked for it and found none.
    tokio::time::timeout(Duration::from_secs(5), found_missing)
        .await
        .expect("the consumer reports the missing topic")
        .unwrap();
    wallet::kafka::ensure_topics(kafka).await.unwrap();
    produce(&settings, &kafka.events_topic, "u1", "{}", &[]).await;
    let read = tokio::time::timeout(Duration::from_secs(20), first).await;
    assert_eq!(
        read.ok().map(Result::unwrap),
        Some(Some(b"u1".to_vec())),
        "the record was read within 20 s of the topic's creation"
    );
}

/// A consumer closing with its assignment still waiting to be applied, its broker gone:
/// librdkafka may terminate the group under a rebalance callback's request and leave the
/// request unanswered for good (the close hung in 2 of 8 runs). Before, that
/// held the thread dropping the consumer, a runtime worker, and with it the end of the
/// test or the service's shutdown, forever; now the close waits on a thread of its own
/// and its caller waits no longer than it asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_closing_mid_rebalance_with_its_broker_gone_never_holds_its_caller() {
    let (mut broker, settings) = own_broker().await;
    let kafka = &settings.kafka;
    wallet::kafka::ensure_topics(kafka).await.unwrap();
    let consumer = points_consumer(kafka);
    // Never polled: the group assigns it the partitions, and the assignment waits for
    // the consumer's rebalance callback.
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.kill();
    let within = Duration::from_secs(5);
    let started = Instant::now();
    consumer.close(within).await;
    assert!(
        started.elapsed() < within + Duration::from_secs(1),
        "the close held its caller for {:?}",
        started.elapsed()
    );
}
