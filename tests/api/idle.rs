//! Consumers that stop fetching while idle (real broker, real Redis): each comes back
//! when records are written to its topic, by this instance or another, or at its next
//! look. The looks are made rare here, so a record that arrives in time came through a
//! wake-up.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use wallet::configuration::Settings;

use crate::support::kafka::{drained_with_points, produce, WAIT};
use crate::support::{eventually, kafka_settings, spawn_app_with, TestApp};

/// Consumers that pause after 300 ms without records and look for records only every
/// ten minutes.
async fn idle_settings() -> Settings {
    let mut settings = kafka_settings().await;
    settings.kafka.idle_after = Duration::from_millis(300);
    settings.kafka.idle_look = Duration::from_secs(600);
    settings
}

/// Long enough for every consumer that has its partitions to have paused.
const IDLE: Duration = Duration::from_millis(2_000);

/// Pays 1,000 through `payer` and waits until `user_id` holds `points` in all, as `app` sees them.
async fn paid_with_points(app: &TestApp, payer: &TestApp, order: &str, user_id: &str, points: i64) {
    assert_eq!(
        payer.pay(order, user_id, 1_000).await.status,
        StatusCode::CREATED
    );
    assert!(
        drained_with_points(app, user_id, points).await,
        "the points of {order} were applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_points_consumer_wakes_when_its_relay_publishes() {
    let app = spawn_app_with(idle_settings().await).await;
    app.funded_wallet("u1", 10_000).await;
    // The first payment also waits for the group's join.
    paid_with_points(&app, &app, "o1", "u1", 10).await;
    for (order, points) in [("o2", 20), ("o3", 30)] {
        tokio::time::sleep(IDLE).await;
        paid_with_points(&app, &app, order, "u1", points).await;
    }
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_points_consumer_wakes_when_another_instance_publishes() {
    let settings = idle_settings().await;
    // One instance relays and consumes nothing; the other consumes and relays nothing,
    // so only the announcement on Redis can wake it.
    let mut relaying = settings.clone();
    relaying.kafka.points_consumer_enabled = false;
    relaying.kafka.requests_consumer_enabled = false;
    relaying.kafka.dlt_consumer_enabled = false;
    let mut consuming = settings;
    consuming.kafka.relay_enabled = false;
    let relay = spawn_app_with(relaying).await;
    let consumer = spawn_app_with(consuming).await;
    relay.funded_wallet("u1", 10_000).await;
    paid_with_points(&consumer, &relay, "o1", "u1", 10).await;
    for (order, points) in [("o2", 20), ("o3", 30)] {
        tokio::time::sleep(IDLE).await;
        paid_with_points(&consumer, &relay, order, "u1", points).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_request_consumer_finds_requests_nobody_announced_at_its_next_look() {
    let mut settings = idle_settings().await;
    settings.kafka.idle_look = Duration::from_millis(500);
    let app = spawn_app_with(settings).await;
    app.funded_wallet("u1", 10_000).await;
    for order in ["r1", "r2"] {
        tokio::time::sleep(IDLE).await;
        let body = json!({ "orderId": order, "userId": "u1", "amount": "100" });
        let topic = &app.settings.kafka.requests_topic;
        produce(&app.settings, topic, "u1", &body.to_string(), &[]).await;
        let paid = eventually(WAIT, || async {
            app.get(&format!("/api/v1/payments/{order}")).await.status == StatusCode::OK
        })
        .await;
        assert!(paid, "{order} paid by event");
    }
}
