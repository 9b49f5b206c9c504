//! Identifiers are byte-exact end to end: Redis keys, the code and the database agree
//! that `ord-abc` and `ORD-ABC` are two orders, `casey` and `CASEY` two users.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::spawn_app;

#[tokio::test]
async fn orders_that_differ_only_in_case_are_two_payments() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 5_000).await;

    let lower = app.pay("ord-abc", "u1", 1_000).await;
    assert_eq!(lower.status, StatusCode::CREATED, "{}", lower.text);
    let upper = app.pay("ORD-ABC", "u1", 1_000).await;
    assert_eq!(upper.status, StatusCode::CREATED, "{}", upper.text);
    assert!(!upper.replayed);
    assert_eq!(upper.json()["orderId"], "ORD-ABC");
    assert_eq!(upper.json()["balanceAfter"], "3000");
    assert_ne!(upper.json()["paymentId"], lower.json()["paymentId"]);

    // Each replays itself, and each reads back as itself.
    let again = app.pay("ORD-ABC", "u1", 1_000).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), upper.json());
    for order in ["ord-abc", "ORD-ABC"] {
        let shown = app.get(&format!("/api/v1/payments/{order}")).await;
        assert_eq!(shown.status, StatusCode::OK);
        assert_eq!(shown.json()["orderId"], order);
    }
    assert_eq!(
        app.get("/api/v1/payments/Ord-Abc").await.status,
        StatusCode::NOT_FOUND
    );

    // A cancel of one leaves the other paid.
    let cancelled = app
        .post("/api/v1/payments/ORD-ABC/cancel", &json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    let other = app.get("/api/v1/payments/ord-abc").await;
    assert_eq!(other.json()["status"], "COMPLETED");
    assert_eq!(app.balance("u1").await, Decimal::from(4_000));
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn top_ups_that_differ_only_in_case_are_two_credits() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 0).await;
    for id in ["tc-1", "TC-1"] {
        let credited = app.top_up("u1", id, "500").await;
        assert_eq!(
            credited.status,
            StatusCode::CREATED,
            "{id}: {}",
            credited.text
        );
        assert_eq!(credited.json()["topUpId"], id);
    }
    assert_eq!(app.balance("u1").await, Decimal::from(1_000));
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn users_that_differ_only_in_case_have_two_wallets() {
    let app = spawn_app().await;
    app.funded_wallet("casey", 3_000).await;
    let created = app
        .post("/api/v1/wallets", &json!({ "userId": "CASEY" }))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json()["userId"], "CASEY");
    assert_eq!(created.json()["balance"], "0");

    // A payment as CASEY finds CASEY's empty wallet, not casey's money.
    let refused = app.pay("order-1", "CASEY", 1_000).await;
    assert_eq!(
        refused.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        refused.text
    );
    assert_eq!(app.balance("casey").await, Decimal::from(3_000));
    assert_eq!(app.balance("CASEY").await, Decimal::ZERO);
    let missing = app.get("/api/v1/wallets/Casey").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    app.assert_ledger_invariants().await;
}
