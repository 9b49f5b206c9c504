//! What a refused request by event publishes: a decline only when the order or hold is
//! not charged, decided under the wallet's lock; a rejection naming what stands
//! otherwise; amounts with the currency's digits; a capture or void that waits for its
//! hold's placement in flight. And the expiry sweeper, which a failing hold does not stop.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wallet::domain::{Amount, Currency, RawAmount};
use wallet::redis_support::KeySpace;
use wallet::startup::Application;
use wallet::wallet::{HoldRefusal, PlaceHold, Refusal};

use crate::support::kafka::{produce, WAIT};
use crate::support::{
    eventually, hold_wallet, id, kafka_settings, spawn_app, spawn_app_with, test_settings, TestApp,
};

/// The types and payloads of the outbox events whose `path` is `id`, oldest first.
async fn events_where(app: &TestApp, path: &str, id: &str) -> Vec<(String, Value)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, payload FROM outbox_events \
         WHERE JSON_VALUE(payload, ?) = ? ORDER BY id",
    )
    .bind(path)
    .bind(id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(kind, payload)| (kind, serde_json::from_str(&payload).unwrap()))
        .collect()
}

fn types(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}

fn krw(value: i64) -> Amount {
    Amount::parse("amount", RawAmount(value.into()), Currency::KRW).unwrap()
}

#[tokio::test]
async fn a_decline_decided_after_the_order_was_paid_is_no_decline() {
    let app = spawn_app().await;
    // The same deployment's use cases, called as the requests consumer calls them.
    let service = Application::build(app.settings.clone())
        .await
        .unwrap()
        .service();
    app.funded_wallet("u1", 5_000).await;
    assert_eq!(app.pay("o1", "u1", 1_000).await.status, StatusCode::CREATED);
    let declined = || Refusal::Declined {
        reason: "insufficient_funds",
    };

    // Refused for want of funds, then paid on the same terms (a top-up and a REST
    // retry in between): the last look under the wallet's lock sees the payment.
    service
        .publish_refusal("req-1", &id("o1"), &id("u1"), krw(1_000), declined())
        .await
        .unwrap();
    assert_eq!(
        types(&events_where(&app, "$.orderId", "o1").await),
        ["payment.completed"]
    );
    // Paid on other terms: a rejection that names the payment.
    service
        .publish_refusal("req-2", &id("o1"), &id("u1"), krw(3_000), declined())
        .await
        .unwrap();
    let events = events_where(&app, "$.orderId", "o1").await;
    assert_eq!(
        types(&events),
        ["payment.completed", "payment.request.rejected"]
    );
    assert_eq!(events[1].1["orderStatus"], "COMPLETED");
    // Not charged: the decline stands.
    service
        .publish_refusal("req-3", &id("o9"), &id("u1"), krw(9_000), declined())
        .await
        .unwrap();
    assert_eq!(
        types(&events_where(&app, "$.orderId", "o9").await),
        ["payment.declined"]
    );

    // The same for holds.
    let held = app
        .post(
            "/api/v1/holds",
            &json!({ "holdId": "h1", "userId": "u1", "amount": "1000" }),
        )
        .await;
    assert_eq!(held.status, StatusCode::CREATED);
    let placing = |value: i64| {
        let mut refusal = HoldRefusal::of_placing(&PlaceHold {
            hold_id: id("h1"),
            user_id: id("u1"),
            amount: krw(value),
            expires_in: chrono::Duration::seconds(60),
        });
        refusal.reason = "insufficient_funds";
        refusal
    };
    service
        .publish_hold_refusal("req-4", placing(1_000))
        .await
        .unwrap();
    assert_eq!(
        types(&events_where(&app, "$.holdId", "h1").await),
        ["hold.created"]
    );
    service
        .publish_hold_refusal("req-5", placing(2_000))
        .await
        .unwrap();
    let events = events_where(&app, "$.holdId", "h1").await;
    assert_eq!(types(&events), ["hold.created", "hold.request.rejected"]);
    assert_eq!(events[1].1["status"], "HELD");
    assert_eq!(events[1].1["reason"], "idempotency_key_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hold_requests_on_other_terms_are_rejected_naming_the_hold_with_the_currencys_digits() {
    let mut settings = kafka_settings().await;
    settings.currency = Currency::USD;
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 100).await;
    let send = |body: Value| {
        let settings = settings.clone();
        async move {
            let topic = &settings.kafka.requests_topic;
            produce(&settings, topic, "u1", &body.to_string(), &[]).await
        }
    };
    send(json!({ "type": "hold", "holdId": "k1", "userId": "u1", "amount": "10.5" })).await;
    send(json!({ "type": "capture", "holdId": "k1", "amount": "5" })).await;
    // A capture repeated with another amount, a hold id reused with other terms.
    send(json!({ "type": "capture", "holdId": "k1", "amount": "6" })).await;
    send(json!({ "type": "hold", "holdId": "k1", "userId": "u1", "amount": "20" })).await;
    send(json!({ "type": "hold", "holdId": "k2", "userId": "u1", "amount": "500.5" })).await;

    let handled = eventually(WAIT, || async {
        events_where(&app, "$.holdId", "k2").await.len() == 1
    })
    .await;
    assert!(handled);
    let k1 = events_where(&app, "$.holdId", "k1").await;
    assert_eq!(
        types(&k1),
        [
            "hold.created",
            "hold.captured",
            "hold.request.rejected",
            "hold.request.rejected"
        ],
        "never a decline for a hold that stands"
    );
    assert_eq!(k1[0].1["amount"], "10.50");
    for rejected in &k1[2..] {
        assert_eq!(rejected.1["status"], "CAPTURED");
        assert_eq!(rejected.1["reason"], "idempotency_key_reused");
    }
    let k2 = events_where(&app, "$.holdId", "k2").await;
    assert_eq!(k2[0].0, "hold.declined");
    assert_eq!(k2[0].1["amount"], "500.50", "the currency's digits");
    assert_eq!(app.count("SELECT COUNT(*) FROM failed_events").await, 0);
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_by_event_waits_for_its_holds_placement_in_flight() {
    let mut settings = kafka_settings().await;
    settings.lock.wait = Duration::from_secs(8);
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 10_000).await;

    // The placement waits on the wallet row the test holds, its claim pending.
    let held = hold_wallet(&app, "u1").await;
    let placing = {
        let (address, client) = (app.address.clone(), app.client.clone());
        tokio::spawn(async move {
            client
                .post(format!("{address}/api/v1/holds"))
                .bearer_auth("test-checkout-key")
                .json(&json!({ "holdId": "h1", "userId": "u1", "amount": "4000" }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let key =
        KeySpace::new(&app.settings.redis.key_prefix).idempotency(&id("h1"), "hold", &id("h1"));
    let pending = app.entry_pending(key).await;
    assert!(pending, "the placement holds its claim");
    let body = json!({ "type": "capture", "holdId": "h1", "amount": "3000" });
    let topic = &settings.kafka.requests_topic;
    produce(&settings, topic, "u1", &body.to_string(), &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    held.rollback().await.unwrap();
    assert_eq!(placing.await.unwrap(), StatusCode::CREATED);

    let captured = eventually(WAIT, || async {
        events_where(&app, "$.holdId", "h1").await.len() == 2
    })
    .await;
    assert!(captured, "{:?}", events_where(&app, "$.holdId", "h1").await);
    assert_eq!(
        types(&events_where(&app, "$.holdId", "h1").await),
        ["hold.created", "hold.captured"]
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM failed_events").await,
        0,
        "not dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_that_cannot_be_expired_does_not_hold_back_the_others() {
    let mut settings = test_settings().await;
    settings.lock.wait = Duration::from_millis(500);
    settings.holds.sweep_interval = Duration::from_millis(200);
    let app = spawn_app_with(settings).await;
    for user in ["busy", "free"] {
        app.funded_wallet(user, 5_000).await;
        let placed = app
            .post(
                "/api/v1/holds",
                &json!({ "holdId": format!("h-{user}"), "userId": user, "amount": "1000", "expiresInSeconds": 1 }),
            )
            .await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    }
    // Another process holds the busy wallet past every lock wait.
    let lock_key = KeySpace::new(&app.settings.redis.key_prefix).lock(&id("busy"));
    let mut redis = redis::Client::open(app.settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("another-process")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();

    let status = |hold: &'static str| {
        let app = &app;
        async move { app.get(&format!("/api/v1/holds/{hold}")).await.json()["status"].clone() }
    };
    let freed = eventually(Duration::from_secs(10), || async {
        status("h-free").await == "EXPIRED"
    })
    .await;
    assert!(freed, "the free wallet's hold expired");
    assert_eq!(status("h-busy").await, "HELD", "its wallet stays busy");
    let _: () = redis::cmd("DEL")
        .arg(&lock_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let expired = eventually(Duration::from_secs(10), || async {
        status("h-busy").await == "EXPIRED"
    })
    .await;
    assert!(expired, "and is expired once the wallet is free");
    app.assert_ledger_invariants().await;
}
