//! Bad input: a clear problem+json 4xx, never a 5xx, nothing applied.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::spawn_app;

#[tokio::test]
async fn each_validation_rule_answers_400_validation_failed() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 10_000).await;
    let long = "x".repeat(65);
    let payments = [
        json!({ "orderId": "o", "userId": "u1", "amount": 0 }),
        json!({ "orderId": "o", "userId": "u1", "amount": -5 }),
        json!({ "orderId": "o", "userId": "u1", "amount": "-5" }),
        json!({ "orderId": "o", "userId": "u1", "amount": 10.5 }),
        json!({ "orderId": "o", "userId": "u1", "amount": "10.5" }),
        json!({ "orderId": "o", "userId": "u1", "amount": "abc" }),
        json!({ "orderId": "o", "userId": "u1", "amount": "1e3" }),
        json!({ "orderId": "o", "userId": "u1", "amount": "1000000000001" }),
        json!({ "orderId": "o", "userId": "u1", "amount": null }),
        json!({ "orderId": "o", "userId": "u1" }),
        json!({ "orderId": "o", "amount": 1 }),
        json!({ "userId": "u1", "amount": 1 }),
        json!({ "orderId": "", "userId": "u1", "amount": 1 }),
        json!({ "orderId": long, "userId": "u1", "amount": 1 }),
        json!({ "orderId": "a b", "userId": "u1", "amount": 1 }),
        json!({ "orderId": "a/b", "userId": "u1", "amount": 1 }),
        json!({ "orderId": "o", "userId": "{u1}", "amount": 1 }),
        json!({ "orderId": 7, "userId": "u1", "amount": 1 }),
        json!({ "orderId": "o", "userId": "u1", "amount": 1, "extra": true }),
        json!([1, 2]),
        json!("text"),
    ];
    for body in &payments {
        let reply = app.post("/api/v1/payments", body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "validation_failed", "{body}");
        assert!(reply.is_problem(), "{body}: {}", reply.text);
    }
    let top_ups = [
        json!({ "topUpId": "", "amount": 1 }),
        json!({ "topUpId": "t", "amount": 0 }),
        json!({ "topUpId": "t" }),
        json!({ "topUpId": "t", "amount": "0.1" }),
    ];
    for body in &top_ups {
        let reply = app.post("/api/v1/wallets/u1/top-ups", body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "validation_failed");
    }
    for body in [json!({}), json!({ "userId": "" }), json!({ "userId": "ü" })] {
        let reply = app.post("/api/v1/wallets", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let malformed = app
        .post_raw(
            "/api/v1/payments",
            "application/json",
            b"{\"orderId\":".to_vec(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.code(), "validation_failed");
    let cancel = app
        .post_raw(
            "/api/v1/payments/o/cancel",
            "application/json",
            b"{oops".to_vec(),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::BAD_REQUEST);
    for path in [
        "/api/v1/wallets/a%20b",
        "/api/v1/payments/a%2Fb",
        "/api/v1/wallets/u1/transactions?limit=0",
        "/api/v1/wallets/u1/transactions?limit=101",
        "/api/v1/wallets/u1/transactions?cursor=abc",
        "/api/v1/wallets/u1/transactions?limit=-1",
    ] {
        let reply = app.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "validation_failed", "{path}");
    }
    let text = app
        .post_raw("/api/v1/payments", "text/plain", b"{}".to_vec())
        .await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(text.code(), "unsupported_media_type");

    // After all the refused requests a valid one still goes through.
    let cents = app.pay("o-cents", "u1", 1).await;
    assert_eq!(cents.status, StatusCode::CREATED);

    assert_eq!(
        app.balance("u1").await,
        Decimal::from(9_999),
        "nothing else was applied"
    );
    app.assert_ledger_invariants().await;
}

/// JSON values shaped like our bodies: the right keys often, wrong types and junk too.
fn json_body() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "[A-Za-z0-9._:-]{0,70}".prop_map(Value::from),
        "[0-9]{0,16}(\\.[0-9]{0,6})?".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("u1")),
    ];
    let key = prop_oneof![
        Just("orderId".to_string()),
        Just("userId".to_string()),
        Just("amount".to_string()),
        Just("topUpId".to_string()),
        Just("reason".to_string()),
        "[a-zA-Z]{1,8}",
    ];
    scalar.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_never_get_a_5xx() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 1_000_000).await;
    let mut runner = TestRunner::deterministic();
    let strategy = json_body();
    let raw = prop::collection::vec(any::<u8>(), 0..64);
    let paths = [
        "/api/v1/payments",
        "/api/v1/wallets",
        "/api/v1/wallets/u1/top-ups",
        "/api/v1/payments/o1/cancel",
    ];
    for case in 0..400 {
        let path = paths[case % paths.len()];
        let reply = if case % 5 == 4 {
            let bytes = raw.new_tree(&mut runner).unwrap().current();
            app.post_raw(path, "application/json", bytes).await
        } else {
            let body = strategy.new_tree(&mut runner).unwrap().current();
            app.post(path, &body).await
        };
        assert!(
            reply.status.as_u16() < 500,
            "{path}: {} {}",
            reply.status,
            reply.text
        );
        if !reply.status.is_success() {
            assert!(
                reply.is_problem(),
                "{path}: not a problem document: {}",
                reply.text
            );
            assert!(!reply.code().is_empty());
        }
    }
    app.assert_ledger_invariants().await;
}
