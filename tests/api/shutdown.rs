//! Shutdown: every background task belongs to the application, and stopping it stops
//! them all at once, in bounded time.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::kafka::WAIT;
use crate::support::{eventually, kafka_settings, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_task_together_and_in_bounded_time() {
    // Every worker on: topic creation, the relay, the three consumers, beside the lock's
    // listener, the breaker's probe, the metrics upkeep and the batch dispatcher.
    let mut app = spawn_app_with(kafka_settings().await).await;

    // One payment, so the dispatcher, the relay and the points consumer all had work.
    app.funded_wallet("u1", 5_000).await;
    let paid = app.pay("o1", "u1", 1_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    let published = eventually(WAIT, || async {
        app.get("/readyz").await.json()["outbox"]["pending"] == 0
    })
    .await;
    assert!(published, "the payment's event left through the relay");

    let asked = Instant::now();
    app.stop(Duration::from_secs(20))
        .await
        .expect("the application stops cleanly within its 15 s bound");
    // Workers stop together, not one after another: well inside the bound.
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        asked.elapsed()
    );
    assert!(
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
}
