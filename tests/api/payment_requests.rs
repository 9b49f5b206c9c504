//! Payments requested by event (real broker): every request ends with its order's real
//! outcome on the events topic, also when the same order is being paid over REST.

use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use wallet::configuration::Settings;

use crate::support::kafka::{points_caught_up, produce, read_topic, WAIT};
use crate::support::{
    eventually, hold_wallet, kafka_settings, pay_in_background, spawn_app_with, TestApp,
};

/// Settings whose debits wait long enough on a wallet row the test holds.
async fn settings() -> Settings {
    let mut settings = kafka_settings().await;
    settings.lock.wait = Duration::from_secs(8);
    settings
}

async fn request(settings: &Settings, order_id: &str, user_id: &str, amount: u64) {
    let body = json!({ "orderId": order_id, "userId": user_id, "amount": amount.to_string() });
    let topic = &settings.kafka.requests_topic;
    produce(settings, topic, user_id, &body.to_string(), &[]).await;
}

/// The types and payloads of the outbox events of `order_id`, oldest first.
async fn events_of(app: &TestApp, order_id: &str) -> Vec<(String, Value)> {
    events_where(app, "$.orderId", order_id).await
}

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

async fn types_of(app: &TestApp, order_id: &str) -> Vec<String> {
    events_of(app, order_id)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect()
}

/// Sends a request of `user_id` and waits until it is paid: the consumer runs, and
/// has handled every earlier request of that user (same key, same partition).
async fn paid_by_event(app: &TestApp, order_id: &str, user_id: &str) {
    request(&app.settings, order_id, user_id, 100).await;
    let paid = eventually(WAIT, || async {
        types_of(app, order_id).await == ["payment.completed"]
    })
    .await;
    assert!(paid, "{order_id} paid by event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_for_an_order_paid_over_rest_at_that_moment_gets_the_real_outcome() {
    let settings = settings().await;
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 5_000).await;
    paid_by_event(&app, "warm-up", "u1").await;

    // Two REST debits in flight, waiting on the wallet row: one will be paid, one
    // refused for want of funds. The same two orders arrive by event meanwhile.
    let held = hold_wallet(&app, "u1").await;
    let paid = pay_in_background(&app, "o-paid", "u1", 2_000);
    // Sent once the first holds its claim, so the first is the one whose batch waits.
    assert!(app.claim_pending("o-paid", "u1").await);
    let refused = pay_in_background(&app, "o-refused", "u1", 9_000);
    // The second queues behind the wallet's running batch; its key is claimed when its
    // own batch starts, so the event's request for it queues beside it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    request(&settings, "o-paid", "u1", 2_000).await;
    request(&settings, "o-refused", "u1", 9_000).await;
    // Well past the consumer's transient retries (a few hundred ms here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    held.rollback().await.unwrap();
    assert_eq!(paid.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(refused.await.unwrap().status, StatusCode::PAYMENT_REQUIRED);

    // A later request of the same user is handled after both.
    paid_by_event(&app, "after", "u1").await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM failed_events").await,
        0,
        "no request was dead-lettered"
    );
    assert_eq!(
        types_of(&app, "o-paid").await,
        ["payment.completed"],
        "paid once, by REST; the request waited and took that outcome"
    );
    let refused = events_of(&app, "o-refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "payment.declined");
    assert_eq!(refused[0].1["reason"], "insufficient_funds");
    assert_eq!(app.balance("u1").await, Decimal::from(2_800));
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_reusing_a_paid_order_is_rejected_never_declined() {
    let settings = settings().await;
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 10_000).await;
    app.funded_wallet("u2", 10_000).await;

    // Paid over REST, then requested by event with another amount.
    let paid = app.pay("o1", "u1", 2_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    request(&settings, "o1", "u1", 3_000).await;
    let answered = eventually(WAIT, || async { events_of(&app, "o1").await.len() == 2 }).await;
    assert!(answered, "{:?}", events_of(&app, "o1").await);
    let events = events_of(&app, "o1").await;
    assert_eq!(
        events
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect::<Vec<_>>(),
        ["payment.completed", "payment.request.rejected"],
        "never payment.declined for a paid order"
    );
    let rejected = &events[1].1;
    assert_eq!(rejected["reason"], "idempotency_key_reused");
    assert_eq!(rejected["orderStatus"], "COMPLETED");
    assert_eq!(rejected["paymentId"], paid.json()["paymentId"]);
    assert_eq!(
        rejected["amount"], "3000",
        "the amount the request asked for"
    );
    assert_eq!(rejected["points"], 0);

    // Cancelled, then requested by event by another user: the rejection says so.
    let cancelled = app.post("/api/v1/payments/o1/cancel", &json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    request(&settings, "o1", "u2", 2_000).await;
    assert!(eventually(WAIT, || async { events_of(&app, "o1").await.len() == 4 }).await);
    let (kind, rejected) = events_of(&app, "o1").await.pop().unwrap();
    assert_eq!(kind, "payment.request.rejected");
    assert_eq!(rejected["orderStatus"], "CANCELLED");
    assert_eq!(rejected["userId"], "u2");

    // Requested by event with another amount while the REST debit is in flight: the
    // request waits for it instead of declining an order about to be paid.
    let held = hold_wallet(&app, "u1").await;
    let in_flight = pay_in_background(&app, "o2", "u1", 2_000);
    assert!(app.claim_pending("o2", "u1").await);
    request(&settings, "o2", "u1", 5_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    held.rollback().await.unwrap();
    assert_eq!(in_flight.await.unwrap().status, StatusCode::CREATED);
    assert!(eventually(WAIT, || async { events_of(&app, "o2").await.len() == 2 }).await);
    let events = events_of(&app, "o2").await;
    assert_eq!(events[0].0, "payment.completed");
    assert_eq!(events[1].0, "payment.request.rejected");
    assert_eq!(events[1].1["orderStatus"], "COMPLETED");
    assert_eq!(app.count("SELECT COUNT(*) FROM failed_events").await, 0);

    // On the topic, with its type in the header; no points move for it.
    let records = read_topic(&settings, &settings.kafka.events_topic, 6).await;
    let rejected: Vec<_> = records
        .iter()
        .filter(|(_, payload)| payload["type"] == "payment.request.rejected")
        .collect();
    assert_eq!(rejected.len(), 3);
    assert!(rejected[0]
        .0
        .iter()
        .any(|(k, v)| k == "event-type" && v == b"payment.request.rejected"));
    assert!(eventually(WAIT, || async { app.unsent_events().await == 0 }).await);
    assert!(eventually(WAIT, || async { app.points("u1").await == 20 }).await);
    assert!(points_caught_up(&app).await, "every record handled");
    assert_eq!(
        app.points("u1").await,
        20,
        "o2's 20 points; o1's were taken back"
    );
    assert_eq!(app.points("u2").await, 0);
}

/// The types and payloads of the outbox events of `hold_id`, oldest first.
async fn hold_events(app: &TestApp, hold_id: &str) -> Vec<(String, Value)> {
    events_where(app, "$.holdId", hold_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_are_placed_captured_voided_and_refused_by_event() {
    let settings = settings().await;
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 10_000).await;
    let send = |body: Value| {
        let settings = settings.clone();
        async move {
            let topic = &settings.kafka.requests_topic;
            produce(&settings, topic, "u1", &body.to_string(), &[]).await
        }
    };
    send(json!({ "type": "hold", "holdId": "k1", "userId": "u1", "amount": "4000" })).await;
    send(json!({ "type": "hold", "holdId": "k2", "userId": "u1", "amount": "3000", "expiresInSeconds": 600 })).await;
    send(json!({ "type": "hold", "holdId": "k3", "userId": "u1", "amount": "5000" })).await;
    send(json!({ "type": "capture", "holdId": "k1", "amount": "1500" })).await;
    send(json!({ "type": "void", "holdId": "k2" })).await;
    send(json!({ "type": "capture", "holdId": "k2" })).await;

    let settled = eventually(WAIT, || async {
        hold_events(&app, "k2").await.len() == 3 && hold_events(&app, "k3").await.len() == 1
    })
    .await;
    assert!(settled, "{:?}", hold_events(&app, "k2").await);
    let types =
        |events: Vec<(String, Value)>| events.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
    assert_eq!(
        types(hold_events(&app, "k1").await),
        ["hold.created", "hold.captured"]
    );
    let k2 = hold_events(&app, "k2").await;
    assert_eq!(
        types(k2.clone()),
        ["hold.created", "hold.voided", "hold.declined"]
    );
    assert_eq!(k2[2].1["reason"], "hold_not_open");
    assert_eq!(k2[2].1["status"], "VOIDED");
    let k3 = hold_events(&app, "k3").await;
    assert_eq!(k3[0].0, "hold.declined");
    assert_eq!(k3[0].1["reason"], "insufficient_funds");

    assert_eq!(app.funds("u1").await, ["8500", "0", "8500"]);
    // The capture earned points like a payment (1 %).
    let earned = eventually(WAIT, || async { app.points("u1").await == 15 }).await;
    assert!(earned, "points {}", app.points("u1").await);
    assert_eq!(app.count("SELECT COUNT(*) FROM failed_events").await, 0);
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_are_requested_by_event_with_the_same_outcomes() {
    let settings = settings().await;
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 10_000).await;
    assert_eq!(app.pay("o1", "u1", 1_000).await.status, StatusCode::CREATED);
    let send = |body: Value| {
        let settings = settings.clone();
        async move {
            let topic = &settings.kafka.requests_topic;
            produce(&settings, topic, "u1", &body.to_string(), &[]).await
        }
    };
    send(json!({ "type": "refund", "refundId": "r1", "orderId": "o1", "amount": "300" })).await;
    send(json!({ "type": "refund", "refundId": "r2", "orderId": "o1", "amount": "800" })).await;
    send(json!({ "type": "refund", "refundId": "r1", "orderId": "o1", "amount": "200" })).await;
    send(json!({ "type": "refund", "refundId": "r3", "orderId": "o1" })).await;

    let handled = eventually(WAIT, || async { events_of(&app, "o1").await.len() == 5 }).await;
    assert!(handled, "{:?}", events_of(&app, "o1").await);
    let events = events_of(&app, "o1").await;
    assert_eq!(
        events.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        [
            "payment.completed",
            "payment.refunded",
            "payment.refund.declined",
            "payment.refund.rejected",
            "payment.refunded"
        ]
    );
    assert_eq!(events[1].1["refundId"], "r1");
    assert_eq!(events[1].1["amount"], "300");
    assert_eq!(events[2].1["reason"], "refund_exceeds_payment");
    assert_eq!(events[2].1["amount"], "800");
    assert_eq!(events[3].1["reason"], "idempotency_key_reused");
    assert_eq!(events[4].1["amount"], "700", "all that remained");
    assert_eq!(
        app.get("/api/v1/payments/o1").await.json()["status"],
        "REFUNDED"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM failed_events").await, 0);
    app.assert_ledger_invariants().await;
}
