//! Dead letters and the operators' retries of them (real broker).

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use serde_json::json;

use wallet::configuration::KafkaSettings;

use crate::support::kafka::{group_caught_up, producer, WAIT};
use crate::support::{eventually, kafka_settings, spawn_app_with, TestApp};

async fn with_status(app: &TestApp, status: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM failed_events WHERE status = ?")
        .bind(status)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_retries_only_what_was_pending_when_it_started() {
    let settings = kafka_settings().await;
    let app = spawn_app_with(settings.clone()).await;
    // Unreadable events: dead-lettered at once, and again each time they are retried.
    // More than two of retry-all's batches, so re-published records have time to come
    // back while the call is still running.
    const POISON: i64 = 250;
    let producer = producer(&settings.kafka.brokers);
    let keys: Vec<String> = (0..POISON).map(|i| format!("junk-{i}")).collect();
    let sends = keys.iter().map(|key| {
        producer.send(
            FutureRecord::to(&settings.kafka.events_topic)
                .key(key)
                .payload("{not json"),
            Duration::from_secs(10),
        )
    });
    for sent in join_all(sends).await {
        sent.map_err(|(e, _)| e)
            .expect("the broker takes the record");
    }
    assert!(
        eventually(WAIT, || async {
            with_status(&app, "PENDING").await == POISON
        })
        .await,
        "every poison record is a pending dead letter"
    );

    let all = app
        .post("/api/v1/admin/failed-events/retry-all", &json!({}))
        .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(
        all.json()["retried"],
        POISON,
        "exactly the dead letters pending at the start, not their echoes"
    );
    assert_eq!(with_status(&app, "RETRIED").await, POISON);

    // Each re-published record failed again and came back once, as a new dead letter
    // that waits for the next call.
    assert!(
        eventually(WAIT, || async {
            with_status(&app, "PENDING").await == POISON
        })
        .await,
        "the echoes are pending"
    );
    // Every record handled: the echoes dead-lettered by the points consumer and stored
    // by the collector, nothing more on its way.
    let kafka = &settings.kafka;
    assert!(group_caught_up(&settings, &kafka.points_group, &kafka.events_topic).await);
    let dlt = KafkaSettings::dlt(&kafka.events_topic);
    assert!(group_caught_up(&settings, &kafka.dlt_group, &dlt).await);
    assert_eq!(with_status(&app, "RETRIED").await, POISON);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM failed_events").await,
        2 * POISON
    );
}
