//! Shutdown: every background task belongs to the application, and stopping it stops
//! them all at once, in bounded time.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use wallet::startup::Application;

use crate::helpers::{eventually, kafka_settings, CHECKOUT_KEY, FUNDING_KEY};
use crate::kafka::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_task_together_and_in_bounded_time() {
    // Every worker on: topic creation, the relay, the three consumers, beside the lock's
    // listener, the breaker's probe, the metrics upkeep and the batch dispatcher.
    let settings = kafka_settings().await;
    let app = Application::build(settings).await.expect("build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // One payment, so the dispatcher, the relay and the points consumer all had work.
    let client = reqwest::Client::new();
    let post = |path: &str, key: &str, body: serde_json::Value| {
        client
            .post(format!("{address}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let created = post("/api/v1/wallets", CHECKOUT_KEY, json!({ "userId": "u1" }));
    assert_eq!(created.await.unwrap().status(), StatusCode::CREATED);
    let top_up = json!({ "topUpId": "t1", "amount": "5000" });
    let topped = post("/api/v1/wallets/u1/top-ups", FUNDING_KEY, top_up);
    assert_eq!(topped.await.unwrap().status(), StatusCode::CREATED);
    let payment = json!({ "orderId": "o1", "userId": "u1", "amount": "1000" });
    let paid = post("/api/v1/payments", CHECKOUT_KEY, payment);
    assert_eq!(paid.await.unwrap().status(), StatusCode::CREATED);
    let published = eventually(WAIT, || async {
        let ready: serde_json::Value = client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ready["outbox"]["pending"] == 0
    })
    .await;
    assert!(published, "the payment's event left through the relay");

    let asked = Instant::now();
    stop.send(()).unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the application stops within its 15 s bound");
    finished.unwrap().expect("a clean stop");
    // Workers stop together, not one after another: well inside the bound.
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        asked.elapsed()
    );
    assert!(
        client
            .get(format!("{address}/healthz"))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
}
