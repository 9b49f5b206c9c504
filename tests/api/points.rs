//! The points consumer under the operations that replay a topic (real broker).

use reqwest::StatusCode;

use crate::support::kafka::{drained_with_points, group_caught_up};
use crate::support::{kafka_settings, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_points_group_does_not_credit_points_again() {
    let settings = kafka_settings().await;
    let events = settings.kafka.events_topic.clone();
    let first = spawn_app_with(settings.clone()).await;
    first.funded_wallet("u1", 10_000).await;
    assert_eq!(
        first.pay("o1", "u1", 5_000).await.status,
        StatusCode::CREATED
    );
    assert!(drained_with_points(&first, "u1", 50).await);

    // The same deployment with its points group renamed: the new group has no offsets,
    // so it reads the events topic from the beginning (and the old group still runs).
    let mut renamed = settings.clone();
    let kafka = &mut renamed.kafka;
    kafka.points_group = format!("{}-renamed", settings.kafka.points_group);
    kafka.create_topics = false;
    kafka.relay_enabled = false;
    kafka.requests_consumer_enabled = false;
    kafka.dlt_consumer_enabled = false;
    let second = spawn_app_with(renamed.clone()).await;
    assert!(
        group_caught_up(&renamed, &renamed.kafka.points_group, &events).await,
        "the renamed group read the whole topic"
    );
    assert_eq!(
        second.points("u1").await,
        50,
        "o1's points were not credited again"
    );

    // Later events are applied once, whichever group gets there first.
    assert_eq!(
        first.pay("o2", "u1", 1_000).await.status,
        StatusCode::CREATED
    );
    assert!(drained_with_points(&first, "u1", 60).await);
    for group in [&settings.kafka.points_group, &renamed.kafka.points_group] {
        assert!(group_caught_up(&settings, group, &events).await);
    }
    assert_eq!(second.points("u1").await, 60);
    assert_eq!(
        first.count("SELECT COUNT(*) FROM processed_events").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_take_back_the_refunded_share_of_the_points() {
    let app = spawn_app_with(kafka_settings().await).await;
    app.funded_wallet("u1", 10_000).await;
    assert_eq!(app.pay("o1", "u1", 5_000).await.status, StatusCode::CREATED);
    assert!(drained_with_points(&app, "u1", 50).await);
    let refund = |id: &'static str, amount: &'static str| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/payments/o1/refunds",
                &serde_json::json!({ "refundId": id, "amount": amount }),
            )
            .await
        }
    };
    assert_eq!(refund("r1", "1250").await.status, StatusCode::CREATED);
    // 50 points for 5,000: a quarter refunded takes back ⌊12.5⌋ = 12.
    assert!(drained_with_points(&app, "u1", 38).await);
    let cancelled = app
        .post("/api/v1/payments/o1/cancel", &serde_json::json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert!(
        drained_with_points(&app, "u1", 0).await,
        "never more than earned"
    );
    app.assert_ledger_invariants().await;
    let report = wallet::audit::audit(&app.db).await.unwrap();
    assert_eq!(report.points_mismatches, 0);
}
