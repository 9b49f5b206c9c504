//! The API's behaviour, one request at a time.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::spawn_app;

#[tokio::test]
async fn a_wallet_is_created_once() {
    let app = spawn_app().await;
    let first = app
        .post("/api/v1/wallets", &json!({ "userId": "u1" }))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json()["balance"], "0");
    assert_eq!(first.json()["currency"], "KRW");
    let again = app
        .post("/api/v1/wallets", &json!({ "userId": "u1" }))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), first.json());
    let missing = app.get("/api/v1/wallets/nobody").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "wallet_not_found");
}

#[tokio::test]
async fn a_payment_debits_once_and_replays_the_identical_body() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 5_000).await;

    let first = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert!(!first.replayed);
    let body = first.json();
    for field in [
        "paymentId",
        "orderId",
        "userId",
        "amount",
        "currency",
        "status",
        "balanceAfter",
        "createdAt",
    ] {
        assert!(body.get(field).is_some(), "missing {field}");
    }
    assert_eq!(body["amount"], "1000");
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["balanceAfter"], "4000");

    // The same request, with the amount written another way.
    let again = app
        .post(
            "/api/v1/payments",
            &json!({ "orderId": "order-1", "userId": "u1", "amount": "1000.0" }),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.replayed);
    assert_eq!(again.text, first.text, "a replay is byte-identical");

    assert_eq!(app.balance("u1").await, Decimal::from(4_000));
    let shown = app.get("/api/v1/payments/order-1").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json(), body);
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn reusing_an_order_id_for_another_request_is_refused() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 5_000).await;
    app.funded_wallet("u2", 5_000).await;
    assert_eq!(
        app.pay("order-1", "u1", 1_000).await.status,
        StatusCode::CREATED
    );

    let other_amount = app.pay("order-1", "u1", 999).await;
    assert_eq!(other_amount.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_amount.code(), "idempotency_key_reused");
    assert!(other_amount.is_problem());
    // The cache is keyed per wallet: the database's unique keys catch another user.
    let other_user = app.pay("order-1", "u2", 1_000).await;
    assert_eq!(other_user.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_user.code(), "idempotency_key_reused");
    let again = app.pay("order-1", "u2", 1_000).await;
    assert_eq!(again.code(), "idempotency_key_reused");
    assert_eq!(app.balance("u1").await, Decimal::from(4_000));
    assert_eq!(app.balance("u2").await, Decimal::from(5_000));

    // Two users racing for one order id at once: one charge, whoever wins.
    let racing = (0..20).map(|i| {
        let user = if i % 2 == 0 { "u1" } else { "u2" };
        app.pay("order-2", user, 100)
    });
    let answers = futures_util::future::join_all(racing).await;
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "one charge for one order id");
    for answer in &answers {
        assert!(
            [StatusCode::CREATED, StatusCode::OK].contains(&answer.status)
                || ["idempotency_key_reused", "request_in_progress"]
                    .contains(&answer.code().as_str()),
            "{} {}",
            answer.status,
            answer.text
        );
    }
    let paid = app.balance("u1").await + app.balance("u2").await;
    assert_eq!(paid, Decimal::from(8_900));
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn insufficient_funds_changes_nothing_and_is_not_cached() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 500).await;

    let declined = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(declined.code(), "insufficient_funds");
    assert!(declined.is_problem());
    assert_eq!(app.balance("u1").await, Decimal::from(500));
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 0);

    // After a top-up the same order goes through.
    let top_up = app
        .post(
            "/api/v1/wallets/u1/top-ups",
            &json!({ "topUpId": "t2", "amount": 1_000 }),
        )
        .await;
    assert_eq!(top_up.status, StatusCode::CREATED);
    let paid = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(app.balance("u1").await, Decimal::from(500));
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn a_top_up_credits_once() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 0).await;
    let body = json!({ "topUpId": "t-1", "amount": "2500" });
    let first = app.post("/api/v1/wallets/u1/top-ups", &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.post("/api/v1/wallets/u1/top-ups", &body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.replayed);
    assert_eq!(again.text, first.text);
    let other = app.top_up("u1", "t-1", "2600").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.balance("u1").await, Decimal::from(2_500));
    let unknown = app
        .post(
            "/api/v1/wallets/ghost/top-ups",
            &json!({ "topUpId": "t-9", "amount": 1 }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "wallet_not_found");
}

#[tokio::test]
async fn a_cancel_credits_back_once_and_repeats_the_same_body() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 3_000).await;
    let paid = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(paid.status, StatusCode::CREATED);

    let cancelled = app
        .post(
            "/api/v1/payments/order-1/cancel",
            &json!({ "reason": "customer asked" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.json()["status"], "CANCELLED");
    assert_eq!(cancelled.json()["refundBalanceAfter"], "3000");
    let again = app
        .post_raw(
            "/api/v1/payments/order-1/cancel",
            "application/json",
            vec![],
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.text, cancelled.text);
    assert_eq!(app.balance("u1").await, Decimal::from(3_000));

    // The debit itself still replays its original answer.
    let replay = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.text, paid.text);

    let missing = app.post("/api/v1/payments/nope/cancel", &json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "payment_not_found");
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn the_database_replays_when_the_redis_cache_is_gone() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 1_000).await;
    let first = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(first.status, StatusCode::CREATED);

    app.forget_cached_replies().await;

    // The balance no longer covers it, but a repeat is a replay, not a 402.
    let again = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.text, first.text);
    let reused = app.pay("order-1", "u1", 5).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.balance("u1").await, Decimal::ZERO);
}

#[tokio::test]
async fn transactions_are_listed_newest_first_by_cursor() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 10_000).await;
    for i in 0..5 {
        assert_eq!(
            app.pay(&format!("o{i}"), "u1", 100).await.status,
            StatusCode::CREATED
        );
    }
    let first = app.get("/api/v1/wallets/u1/transactions?limit=4").await;
    assert_eq!(first.status, StatusCode::OK);
    let page = first.json();
    let refs: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reference"].clone())
        .collect();
    assert_eq!(refs, vec!["o4", "o3", "o2", "o1"]);
    assert_eq!(page["items"][0]["amount"], "-100");
    let cursor = page["nextCursor"].as_str().unwrap();
    let second = app
        .get(&format!(
            "/api/v1/wallets/u1/transactions?limit=4&cursor={cursor}"
        ))
        .await;
    let page = second.json();
    let refs: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reference"].clone())
        .collect();
    assert_eq!(refs, vec!["o0", "seed-u1"]);
    assert!(page.get("nextCursor").is_none());
}

#[tokio::test]
async fn readiness_reports_the_lock_mode() {
    let app = spawn_app().await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["lockMode"], "redis");
    assert_eq!(ready.json()["mysql"], "up");
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
}
