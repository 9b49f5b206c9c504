//! Production hardening: API keys, rate limits, body and content-type limits, the
//! request timeout, load shedding, metrics, OpenAPI and request ids.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest;
use tokio::task::JoinSet;
use wallet::configuration::ApiKeys;
use wallet::startup::Application;

use crate::support::proxy::DatabaseProxy;
use crate::support::{
    spawn_app, spawn_app_with, test_settings, ADMIN_KEY, CHECKOUT_KEY, FUNDING_KEY,
};

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 1_000).await;
    let body = json!({ "orderId": "o1", "userId": "u1", "amount": 100 });
    for key in [None, Some("not-a-key"), Some("")] {
        let reply = app.post_as(key, "/api/v1/payments", &body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(reply.code(), "unauthorized");
        assert_eq!(reply.www_authenticate, "Bearer");
        assert!(reply.is_problem());
    }
    let wrong_scheme = app
        .client
        .get(format!("{}/api/v1/wallets/u1", app.address))
        .header("authorization", format!("Basic {CHECKOUT_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_scheme.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM payments").await,
        0,
        "nothing applied"
    );
    // Operations routes need no key.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let reply = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn keys_may_be_configured_as_sha256_hashes() {
    let mut settings = test_settings().await;
    let hashed: String = sha2::Sha256::digest(b"hashed-key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    settings.api.keys = format!("checkout:sha256:{hashed}, admin:plain-admin-key")
        .parse::<ApiKeys>()
        .unwrap()
        .0;
    let app = spawn_app_with(settings).await;
    for key in ["hashed-key", "plain-admin-key"] {
        let reply = app
            .post_as(Some(key), "/api/v1/wallets", &json!({ "userId": key }))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{key}");
    }
    let hash_itself = app
        .post_as(Some(&hashed), "/api/v1/wallets", &json!({ "userId": "x" }))
        .await;
    assert_eq!(
        hash_itself.status,
        StatusCode::UNAUTHORIZED,
        "the hash is not the key"
    );
    assert!("checkout:sha256:abc".parse::<ApiKeys>().is_err());
    assert!("owner:key".parse::<ApiKeys>().is_err());
}

#[tokio::test]
async fn the_service_refuses_to_start_without_keys_unless_in_development() {
    let mut settings = test_settings().await;
    settings.api.keys.clear();
    settings.api.development = false;
    let refused = Application::build(settings.clone()).await;
    assert!(refused.is_err(), "no keys, not a development run");
    settings.api.development = true;
    let app = spawn_app_with(settings).await;
    let open = app
        .post_as(None, "/api/v1/wallets", &json!({ "userId": "dev" }))
        .await;
    assert_eq!(
        open.status,
        StatusCode::CREATED,
        "a development run without keys is open"
    );
}

#[tokio::test]
async fn over_the_rate_a_key_gets_429_and_nothing_is_applied() {
    let mut settings = test_settings().await;
    settings.api.rate_per_second = 1;
    settings.api.burst = 3;
    let app = spawn_app_with(settings).await;
    let created = app
        .post_as(
            Some(ADMIN_KEY),
            "/api/v1/wallets",
            &json!({ "userId": "u1" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let reply = app
            .post_as(
                Some(FUNDING_KEY),
                "/api/v1/wallets/u1/top-ups",
                &json!({ "topUpId": format!("t{i}"), "amount": 10 }),
            )
            .await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.code(), "rate_limited");
            assert!(reply.retry_after.parse::<u64>().unwrap() >= 1);
            assert!(reply.is_problem());
        }
        statuses.push(reply.status);
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited >= 2, "{statuses:?}");
    let credited = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count() as i64;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM top_ups").await,
        credited,
        "a 429 applies nothing"
    );
    // Another key has its own budget.
    let other = app
        .post_as(
            Some(ADMIN_KEY),
            "/api/v1/wallets",
            &json!({ "userId": "u2" }),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
}

#[tokio::test]
async fn bodies_over_16_kib_get_413_and_other_content_types_415() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 1_000).await;
    let huge = format!(
        r#"{{"orderId":"o1","userId":"u1","amount":"1","pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let too_large = app
        .post_raw("/api/v1/payments", "application/json", huge.into_bytes())
        .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.code(), "payload_too_large");
    assert!(too_large.is_problem());
    let form = app
        .post_raw(
            "/api/v1/payments",
            "application/x-www-form-urlencoded",
            b"orderId=o1".to_vec(),
        )
        .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(form.code(), "unsupported_media_type");
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_cap_requests_are_shed_with_503() {
    let mut settings = test_settings().await;
    settings.api.max_in_flight = 2;
    let proxy = DatabaseProxy::in_front_of(&mut settings).await;
    let app = Arc::new(spawn_app_with(settings).await);
    app.funded_wallet("u1", 100_000).await;
    proxy.stall_transactions(Some(Duration::from_millis(400)));
    let mut load = JoinSet::new();
    for i in 0..12 {
        let app = app.clone();
        load.spawn(async move { app.pay(&format!("shed-{i}"), "u1", 10).await });
    }
    let replies = load.join_all().await;
    let shed: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!shed.is_empty(), "some requests were shed");
    for reply in &shed {
        assert_eq!(reply.code(), "overloaded");
        assert_eq!(reply.retry_after, "1");
    }
    // The metrics layer is outside the load shedder: shed answers are counted too.
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("http_requests_total{")
                && line.contains("route=\"unrouted\"")
                && line.contains("status=\"503\"")),
        "shed requests counted as unrouted 503s"
    );
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count() as i64;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM payments").await,
        ok,
        "shed requests applied nothing"
    );
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn metrics_are_scraped_in_prometheus_format() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 1_000).await;
    assert_eq!(app.pay("m1", "u1", 10).await.status, StatusCode::CREATED);
    assert_eq!(app.pay("m1", "u1", 10).await.status, StatusCode::OK);
    assert_eq!(
        app.pay("m1", "u1", 11).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let scrape = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert!(scrape.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = scrape.text().await.unwrap();
    for name in [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "wallet_lock_acquisitions_total{outcome=\"acquired\"}",
        "wallet_lock_wait_seconds_bucket",
        "wallet_lock_mode{mode=\"redis\"}",
        "wallet_redis_breaker_open",
        "wallet_idempotent_replays_total{scope=\"payment\"}",
        "wallet_idempotency_key_reused_total{scope=\"payment\"}",
        "wallet_db_transaction_seconds_bucket{scope=\"batch\"",
        "wallet_batch_commands_bucket",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(text.contains("route=\"/api/v1/payments\""));
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = spawn_app().await;
    let doc = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    let doc: serde_json::Value = doc.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = [
        ("POST", "/api/v1/wallets"),
        ("GET", "/api/v1/wallets/{user_id}"),
        ("POST", "/api/v1/wallets/{user_id}/top-ups"),
        ("GET", "/api/v1/wallets/{user_id}/transactions"),
        ("POST", "/api/v1/payments"),
        ("GET", "/api/v1/payments/{order_id}"),
        ("POST", "/api/v1/payments/{order_id}/cancel"),
        ("POST", "/api/v1/payments/{order_id}/refunds"),
        ("POST", "/api/v1/holds"),
        ("GET", "/api/v1/holds/{hold_id}"),
        ("POST", "/api/v1/holds/{hold_id}/capture"),
        ("POST", "/api/v1/holds/{hold_id}/void"),
        ("GET", "/api/v1/admin/failed-events"),
        ("POST", "/api/v1/admin/failed-events/retry-all"),
        ("POST", "/api/v1/admin/failed-events/{id}/retry"),
        ("POST", "/api/v1/admin/failed-events/{id}/ignore"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(
        documented, routes,
        "the document lists exactly the router's routes"
    );
    // And every documented operation is served by the router (never its fallback).
    for (method, path) in &documented {
        let url = format!("{}{}", app.address, path.replace(['{', '}'], ""));
        let request = app
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth(ADMIN_KEY);
        let reply = crate::support::Reply::read(request.send().await.unwrap()).await;
        assert_ne!(reply.code(), "not_found", "{method} {path} is not routed");
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn the_request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let given = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "req-123");
    let generated = app.get("/api/v1/wallets/nobody").await;
    assert_eq!(generated.request_id.len(), 36, "a UUID is generated");
}
