//! Refunds: in parts, idempotent by refund id, never beyond what was paid; one charge
//! per order, a captured hold refunded like a payment.

use std::sync::Arc;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;
use wallet::configuration::LockMode;

use crate::support::{spawn_app, spawn_app_with, test_settings, Reply, TestApp};

async fn refund(app: &TestApp, order_id: &str, body: serde_json::Value) -> Reply {
    app.post(&format!("/api/v1/payments/{order_id}/refunds"), &body)
        .await
}

#[tokio::test]
async fn a_payment_is_refunded_in_parts_and_never_beyond_what_was_paid() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 5_000).await;
    assert_eq!(app.pay("o1", "u1", 1_000).await.status, StatusCode::CREATED);

    let first = refund(
        &app,
        "o1",
        json!({ "refundId": "r1", "amount": "300", "reason": "one item of three" }),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let body = first.json();
    assert_eq!(body["refundId"], "r1");
    assert_eq!(body["orderId"], "o1");
    assert_eq!(body["userId"], "u1");
    assert_eq!(body["amount"], "300");
    assert_eq!(body["refundedTotal"], "300");
    assert_eq!(body["balanceAfter"], "4300");
    assert_eq!(body["reason"], "one item of three");
    assert!(body["createdAt"].is_string());

    let again = refund(&app, "o1", json!({ "refundId": "r1", "amount": "300" })).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.replayed);
    assert_eq!(again.text, first.text, "a repeat is byte-identical");
    let other_amount = refund(&app, "o1", json!({ "refundId": "r1", "amount": "200" })).await;
    assert_eq!(other_amount.code(), "idempotency_key_reused");

    let too_much = refund(&app, "o1", json!({ "refundId": "r2", "amount": "701" })).await;
    assert_eq!(too_much.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_much.code(), "refund_exceeds_payment");
    assert_eq!(
        app.balance("u1").await,
        Decimal::from(4_300),
        "nothing applied"
    );

    let shown = app.get("/api/v1/payments/o1").await.json();
    assert_eq!(shown["refundedAmount"], "300");
    assert_eq!(shown["status"], "COMPLETED");

    // No amount: all that remains.
    let rest = refund(&app, "o1", json!({ "refundId": "r3" })).await;
    assert_eq!(rest.status, StatusCode::CREATED, "{}", rest.text);
    assert_eq!(rest.json()["amount"], "700");
    assert_eq!(rest.json()["refundedTotal"], "1000");
    let shown = app.get("/api/v1/payments/o1").await.json();
    assert_eq!(shown["refundedAmount"], "1000");
    assert_eq!(shown["status"], "REFUNDED");
    let nothing_left = refund(&app, "o1", json!({ "refundId": "r4" })).await;
    assert_eq!(nothing_left.code(), "refund_exceeds_payment");

    // The payment's own replay is its first answer.
    let replay = app.pay("o1", "u1", 1_000).await;
    assert_eq!(replay.json()["status"], "COMPLETED");
    assert_eq!(replay.json()["refundedAmount"], "0");

    let unknown = refund(&app, "nope", json!({ "refundId": "r5" })).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "payment_not_found");
    let same_id_other_order = {
        assert_eq!(app.pay("o2", "u1", 500).await.status, StatusCode::CREATED);
        refund(&app, "o2", json!({ "refundId": "r1", "amount": "300" })).await
    };
    assert_eq!(same_id_other_order.code(), "idempotency_key_reused");
    app.assert_ledger_invariants().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM ledger_entries WHERE entry_type = 'PARTIAL_REFUND'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_cancel_gives_back_what_remains_and_a_refund_after_it_has_nothing_left() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 5_000).await;
    app.pay("o1", "u1", 1_000).await;
    refund(&app, "o1", json!({ "refundId": "r1", "amount": "400" })).await;
    let cancelled = app
        .post(
            "/api/v1/payments/o1/cancel",
            &json!({ "reason": "changed mind" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.json()["status"], "CANCELLED");
    assert_eq!(cancelled.json()["refundedAmount"], "1000");
    assert_eq!(app.balance("u1").await, Decimal::from(5_000));
    let after = refund(&app, "o1", json!({ "refundId": "r2", "amount": "1" })).await;
    assert_eq!(after.code(), "refund_exceeds_payment");
    // The replay of the refund made before the cancel still answers as it was.
    let replay = refund(&app, "o1", json!({ "refundId": "r1" })).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.json()["amount"], "400");
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn a_captured_hold_is_its_orders_payment_and_an_order_is_charged_once() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 10_000).await;
    let held = app
        .post(
            "/api/v1/holds",
            &json!({ "holdId": "order-7", "userId": "u1", "amount": "3000" }),
        )
        .await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    // The order is held: a payment for it is a second charge.
    let paid = app.pay("order-7", "u1", 3_000).await;
    assert_eq!(paid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(paid.code(), "idempotency_key_reused");
    assert_eq!(
        app.get("/api/v1/payments/order-7").await.code(),
        "payment_not_found",
        "not paid until it is captured"
    );
    let captured = app
        .post(
            "/api/v1/holds/order-7/capture",
            &json!({ "amount": "2000" }),
        )
        .await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.text);
    let payment = app.get("/api/v1/payments/order-7").await;
    assert_eq!(payment.status, StatusCode::OK, "{}", payment.text);
    assert_eq!(payment.json()["amount"], "2000");
    assert_eq!(payment.json()["status"], "COMPLETED");
    let part = refund(
        &app,
        "order-7",
        json!({ "refundId": "r7", "amount": "500" }),
    )
    .await;
    assert_eq!(part.status, StatusCode::CREATED, "{}", part.text);
    let cancelled = app
        .post("/api/v1/payments/order-7/cancel", &json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(app.balance("u1").await, Decimal::from(10_000));

    // And the other way round: a paid order cannot be held.
    app.pay("order-8", "u1", 1_000).await;
    let hold = app
        .post(
            "/api/v1/holds",
            &json!({ "holdId": "order-8", "userId": "u1", "amount": "1000" }),
        )
        .await;
    assert_eq!(hold.code(), "idempotency_key_reused");
    app.assert_ledger_invariants().await;
}

/// 20 refunds of 100 at once on a payment of 1,000: ten succeed, ten are refused.
async fn refunds_race(apps: Vec<Arc<TestApp>>) {
    let app = apps[0].clone();
    app.funded_wallet("u1", 1_000).await;
    app.pay("o1", "u1", 1_000).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let app = apps[i % apps.len()].clone();
        tasks.spawn(async move {
            refund(
                &app,
                "o1",
                json!({ "refundId": format!("r{i}"), "amount": "100" }),
            )
            .await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap();
        match reply.status {
            StatusCode::CREATED => ok += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(reply.code(), "refund_exceeds_payment");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert_eq!((ok, refused), (10, 10));
    assert_eq!(app.balance("u1").await, Decimal::from(1_000));
    assert_eq!(
        app.get("/api/v1/payments/o1").await.json()["status"],
        "REFUNDED"
    );
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_exceed_the_payment_on_the_redis_path() {
    refunds_race(vec![Arc::new(spawn_app().await)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_exceed_the_payment_on_the_fallback() {
    let mut settings = test_settings().await;
    settings.lock.mode = LockMode::Mysql;
    refunds_race(vec![Arc::new(spawn_app_with(settings).await)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_exceed_the_payment_across_two_modes() {
    let settings = test_settings().await;
    let on_redis = Arc::new(spawn_app_with(settings.clone()).await);
    let mut fallback = settings;
    fallback.lock.mode = LockMode::Mysql;
    let on_mysql = Arc::new(spawn_app_with(fallback).await);
    refunds_race(vec![on_redis, on_mysql]).await;
}

#[tokio::test]
async fn orders_charged_twice_before_the_upgrade_survive_the_migration_and_are_reported() {
    let settings = test_settings().await;
    let db = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&settings.database.url)
        .await
        .unwrap();
    // The schema as it was before one charge per order.
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 20261205000001)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&db).await.unwrap();
    // `x` paid and also held and captured under the same id; `y` only captured.
    for sql in [
        "INSERT INTO wallets (user_id, currency, balance, held, created_at, updated_at) \
         VALUES ('u1', 'KRW', 7000, 0, NOW(6), NOW(6))",
        "INSERT INTO ledger_entries (user_id, entry_type, amount, balance_after, reference, created_at) \
         VALUES ('u1', 'TOP_UP', 10000, 10000, 't1', NOW(6))",
        "INSERT INTO top_ups (top_up_id, user_id, amount, currency, balance_after, created_at) \
         VALUES ('t1', 'u1', 10000, 'KRW', 10000, NOW(6))",
        "INSERT INTO payments (payment_id, order_id, user_id, amount, currency, status, balance_after, created_at, points) \
         VALUES (UUID(), 'x', 'u1', 1000, 'KRW', 'COMPLETED', 9000, NOW(6), 10)",
        "INSERT INTO ledger_entries (user_id, entry_type, amount, balance_after, reference, created_at) \
         VALUES ('u1', 'PAYMENT', -1000, 9000, 'x', NOW(6))",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    for (hold, captured, balance) in [("x", 1000, 8000), ("y", 1000, 7000)] {
        sqlx::query(
            "INSERT INTO holds (hold_id, user_id, amount, currency, status, captured_amount, points, \
             expires_at, created_at, balance_after, held_after, settled_at, settled_balance_after, settled_held_after) \
             VALUES (?, 'u1', ?, 'KRW', 'CAPTURED', ?, 10, NOW(6), NOW(6), ?, ?, NOW(6), ?, 0)",
        )
        .bind(hold)
        .bind(captured)
        .bind(captured)
        .bind(balance + captured)
        .bind(captured)
        .bind(balance)
        .execute(&db)
        .await
        .unwrap();
        for (kind, amount, held) in [("HOLD", 0, captured), ("CAPTURE", -captured, -captured)] {
            sqlx::query(
                "INSERT INTO ledger_entries (user_id, entry_type, amount, balance_after, held_delta, held_after, reference, created_at) \
                 VALUES ('u1', ?, ?, 0, ?, 0, ?, NOW(6))",
            )
            .bind(kind)
            .bind(amount)
            .bind(held)
            .bind(hold)
            .execute(&db)
            .await
            .unwrap();
        }
    }

    // The upgrade: the service applies the rest at start-up.
    let app = spawn_app_with(settings).await;
    let report = wallet::audit::audit(&app.db).await.unwrap();
    assert_eq!(report.orders_charged_twice, 1, "{report:#?}");
    assert_eq!(report.violations.len(), 1, "{report:#?}");
    // `y`'s capture is its order's payment now, refundable like any.
    let y = app.get("/api/v1/payments/y").await;
    assert_eq!(y.status, StatusCode::OK, "{}", y.text);
    assert_eq!(y.json()["amount"], "1000");
    let refunded = refund(&app, "y", json!({ "refundId": "ry", "amount": "100" })).await;
    assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.text);
    // `x` keeps its payment.
    assert_eq!(app.get("/api/v1/payments/x").await.json()["amount"], "1000");
}
