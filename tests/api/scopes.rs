//! What each API key scope may do: top-ups create money and need a `funding` key, the
//! failed-events routes need an `admin` key, every key may pay and read.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::{spawn_app, ADMIN_KEY, CHECKOUT_KEY, FUNDING_KEY};

#[tokio::test]
async fn only_a_funding_key_may_top_up() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 0).await;
    let top_up = json!({ "topUpId": "t-1", "amount": "5000" });
    for key in [CHECKOUT_KEY, ADMIN_KEY] {
        let refused = app
            .post_as(Some(key), "/api/v1/wallets/u1/top-ups", &top_up)
            .await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{key}: {}",
            refused.text
        );
        assert_eq!(refused.code(), "forbidden");
        assert!(refused.is_problem());
    }
    assert_eq!(app.balance("u1").await, Decimal::ZERO, "nothing applied");
    assert_eq!(app.count("SELECT COUNT(*) FROM top_ups").await, 0);

    let credited = app
        .post_as(Some(FUNDING_KEY), "/api/v1/wallets/u1/top-ups", &top_up)
        .await;
    assert_eq!(credited.status, StatusCode::CREATED, "{}", credited.text);
    // The same top-up id, refused for a checkout key even as a repeat.
    let repeat = app
        .post_as(Some(CHECKOUT_KEY), "/api/v1/wallets/u1/top-ups", &top_up)
        .await;
    assert_eq!(repeat.status, StatusCode::FORBIDDEN);
    assert_eq!(app.balance("u1").await, Decimal::from(5_000));
}

#[tokio::test]
async fn only_an_admin_key_may_use_the_failed_events_routes() {
    let app = spawn_app().await;
    for key in [CHECKOUT_KEY, FUNDING_KEY] {
        let refused = app
            .client
            .get(format!("{}/api/v1/admin/failed-events", app.address))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{key}");
        let refused = crate::support::Reply::read(refused).await;
        assert_eq!(refused.code(), "forbidden");
    }
    assert_eq!(
        app.get("/api/v1/admin/failed-events").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_key_may_use_the_wallet_and_payment_routes() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 3_000).await;
    for (n, key) in [CHECKOUT_KEY, FUNDING_KEY, ADMIN_KEY]
        .into_iter()
        .enumerate()
    {
        let created = app
            .post_as(
                Some(key),
                "/api/v1/wallets",
                &json!({ "userId": format!("w{n}") }),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{key}");
        let paid = app
            .post_as(
                Some(key),
                "/api/v1/payments",
                &json!({ "orderId": format!("o{n}"), "userId": "u1", "amount": "1000" }),
            )
            .await;
        assert_eq!(paid.status, StatusCode::CREATED, "{key}: {}", paid.text);
    }
    assert_eq!(app.balance("u1").await, Decimal::ZERO);
}
