//! The balance cap: replays come before limits, and a refund gives back what was paid.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::{spawn_app, TestApp};

/// 10^14, the most a top-up may bring a balance to.
const CAP: u64 = 100_000_000_000_000;
/// 10^12, the most one request may move.
const MOST: u64 = 1_000_000_000_000;

/// Tops `user_id` up to exactly the cap, in the largest steps a request allows.
async fn fill_to_cap(app: &TestApp, user_id: &str) {
    app.funded_wallet(user_id, 0).await;
    for step in 0..CAP / MOST {
        let credited = app
            .post(
                &format!("/api/v1/wallets/{user_id}/top-ups"),
                &json!({ "topUpId": format!("fill-{step}"), "amount": MOST }),
            )
            .await;
        assert_eq!(credited.status, StatusCode::CREATED, "{}", credited.text);
    }
    assert_eq!(app.balance(user_id).await, Decimal::from(CAP));
}

#[tokio::test]
async fn a_top_up_replay_at_the_cap_is_a_replay_not_a_limit() {
    let app = spawn_app().await;
    fill_to_cap(&app, "u1").await;
    let over = app.top_up("u1", "one-more", "1").await;
    assert_eq!(
        over.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        over.text
    );
    assert_eq!(over.code(), "balance_limit_exceeded");

    // The last top-up, repeated after its cached reply is gone: the database replays it.
    app.forget_cached_replies().await;
    let last = format!("fill-{}", CAP / MOST - 1);
    let again = app
        .post(
            "/api/v1/wallets/u1/top-ups",
            &json!({ "topUpId": last, "amount": MOST }),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert!(again.replayed);
    assert_eq!(again.json()["topUpId"], last);
    assert_eq!(app.balance("u1").await, Decimal::from(CAP));
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn a_refund_may_take_the_balance_past_the_cap() {
    let app = spawn_app().await;
    fill_to_cap(&app, "u1").await;
    let paid = app.pay("order-1", "u1", 1_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    let refilled = app
        .post(
            "/api/v1/wallets/u1/top-ups",
            &json!({ "topUpId": "refill", "amount": 1_000 }),
        )
        .await;
    assert_eq!(refilled.status, StatusCode::CREATED, "{}", refilled.text);

    // The payment's money comes back even though the wallet sits at the cap.
    let cancelled = app
        .post("/api/v1/payments/order-1/cancel", &json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.json()["status"], "CANCELLED");
    assert_eq!(app.balance("u1").await, Decimal::from(CAP + 1_000));
    app.assert_ledger_invariants().await;
}
