//! Holds: reserve, capture (in full or in part), void, expire; under concurrency, races,
//! two instances in different lock modes, and after the reply cache is forgotten.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use wallet::configuration::{LockMode, Settings};

use crate::support::{eventually, spawn_app, spawn_app_with, test_settings, Reply, TestApp};

impl TestApp {
    pub async fn hold(&self, hold_id: &str, user_id: &str, amount: u64) -> Reply {
        self.post(
            "/api/v1/holds",
            &json!({ "holdId": hold_id, "userId": user_id, "amount": amount.to_string() }),
        )
        .await
    }

    pub async fn capture(&self, hold_id: &str, amount: Option<u64>) -> Reply {
        let body = match amount {
            Some(amount) => json!({ "amount": amount.to_string() }),
            None => json!({}),
        };
        self.post(&format!("/api/v1/holds/{hold_id}/capture"), &body)
            .await
    }

    pub async fn void(&self, hold_id: &str) -> Reply {
        self.post(&format!("/api/v1/holds/{hold_id}/void"), &json!({}))
            .await
    }

    /// `balance`, `held`, `available` of the wallet as `GET` shows it.
    pub async fn funds(&self, user_id: &str) -> [String; 3] {
        let wallet = self.get(&format!("/api/v1/wallets/{user_id}")).await.json();
        ["balance", "held", "available"].map(|field| wallet[field].as_str().unwrap().to_owned())
    }
}

fn funds_of(reply: &Value) -> [&str; 3] {
    ["balance", "held", "available"].map(|field| reply[field].as_str().unwrap())
}

#[tokio::test]
async fn a_hold_reserves_and_a_partial_capture_debits_part_and_releases_the_rest() {
    let app = spawn_app().await;
    app.funded_wallet("ann", 10_000).await;

    let held = app.hold("h1", "ann", 3_000).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    let hold = held.json();
    assert_eq!(hold["status"], "HELD");
    assert_eq!(funds_of(&hold), ["10000", "3000", "7000"]);
    assert_eq!(app.funds("ann").await, ["10000", "3000", "7000"]);

    // Payments take only the available balance.
    let too_much = app.pay("o1", "ann", 8_000).await;
    assert_eq!(too_much.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(too_much.code(), "insufficient_funds");
    assert_eq!(
        app.pay("o2", "ann", 7_000).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.funds("ann").await, ["3000", "3000", "0"]);

    let captured = app.capture("h1", Some(2_000)).await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.text);
    let body = captured.json();
    assert_eq!(body["status"], "CAPTURED");
    assert_eq!(body["capturedAmount"], "2000");
    assert_eq!(funds_of(&body), ["1000", "0", "1000"]);
    assert_eq!(app.funds("ann").await, ["1000", "0", "1000"]);

    let again = app.capture("h1", Some(2_000)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.replayed);
    assert_eq!(again.json(), body, "a repeat answers the same body");
    assert_eq!(
        app.capture("h1", Some(1_000)).await.code(),
        "idempotency_key_reused"
    );

    let void = app.void("h1").await;
    assert_eq!(void.status, StatusCode::CONFLICT);
    assert_eq!(void.code(), "hold_not_open");
    assert_eq!(void.json()["hold"]["status"], "CAPTURED");

    let entries: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT entry_type, amount, held_delta FROM ledger_entries \
         WHERE reference = 'h1' ORDER BY entry_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let entries: Vec<(String, String, String)> = entries
        .into_iter()
        .map(|(t, a, h)| (t, a.normalize().to_string(), h.normalize().to_string()))
        .collect();
    assert_eq!(
        entries,
        [
            ("HOLD".into(), "0".into(), "3000".into()),
            ("CAPTURE".into(), "-2000".into(), "-3000".into())
        ]
    );
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM outbox_events WHERE JSON_VALUE(payload, '$.holdId') = 'h1' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(events, ["hold.created", "hold.captured"]);
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn a_capture_larger_than_the_hold_or_a_hold_larger_than_the_available_balance_changes_nothing(
) {
    let app = spawn_app().await;
    app.funded_wallet("bo", 5_000).await;
    assert_eq!(
        app.hold("h1", "bo", 3_000).await.status,
        StatusCode::CREATED
    );

    let over = app.capture("h1", Some(3_001)).await;
    assert_eq!(over.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(over.code(), "capture_exceeds_hold");
    let second = app.hold("h2", "bo", 2_001).await;
    assert_eq!(second.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(second.code(), "insufficient_funds");
    assert_eq!(app.funds("bo").await, ["5000", "3000", "2000"]);
    assert_eq!(app.get("/api/v1/holds/h1").await.json()["status"], "HELD");
    assert_eq!(app.get("/api/v1/holds/h2").await.code(), "hold_not_found");
    assert_eq!(app.capture("nope", None).await.code(), "hold_not_found");

    // The whole hold, without a body.
    let full = app
        .post_raw("/api/v1/holds/h1/capture", "application/json", Vec::new())
        .await;
    assert_eq!(full.status, StatusCode::OK, "{}", full.text);
    assert_eq!(full.json()["capturedAmount"], "3000");
    assert_eq!(app.funds("bo").await, ["2000", "0", "2000"]);
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn a_hold_life_outside_its_bounds_is_refused() {
    let app = spawn_app().await;
    app.funded_wallet("cy", 5_000).await;
    for seconds in [
        json!(0),
        json!(2_592_001),
        json!(-1),
        json!(1.5),
        json!("60"),
    ] {
        let reply = app
            .post(
                "/api/v1/holds",
                &json!({ "holdId": "h", "userId": "cy", "amount": "1", "expiresInSeconds": seconds }),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{seconds}: {}",
            reply.text
        );
        assert!(reply.is_problem());
    }
    let day = app
        .post(
            "/api/v1/holds",
            &json!({ "holdId": "h", "userId": "cy", "amount": "1", "expiresInSeconds": 86_400 }),
        )
        .await;
    assert_eq!(day.status, StatusCode::CREATED);
    let hold = day.json();
    let created =
        chrono::DateTime::parse_from_rfc3339(hold["createdAt"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(hold["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, chrono::Duration::days(1));
    // The same hold id with another life is another request.
    let other = app
        .post(
            "/api/v1/holds",
            &json!({ "holdId": "h", "userId": "cy", "amount": "1", "expiresInSeconds": 60 }),
        )
        .await;
    assert_eq!(other.code(), "idempotency_key_reused");
}

async fn one_hundred_fifty_holders(settings: Settings) {
    let app = Arc::new(spawn_app_with(settings).await);
    app.funded_wallet("hot", 100_000).await;
    let mut holders = JoinSet::new();
    for i in 0..150 {
        let app = app.clone();
        holders.spawn(async move { app.hold(&format!("h{i}"), "hot", 1_000).await });
    }
    let replies = holders.join_all().await;
    let held = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::PAYMENT_REQUIRED)
        .count();
    assert_eq!(
        (held, refused),
        (100, 50),
        "{:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    assert_eq!(app.funds("hot").await, ["100000", "100000", "0"]);
    assert_eq!(
        app.pay("one-more", "hot", 1).await.code(),
        "insufficient_funds"
    );
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_fifty_concurrent_holds_never_hold_more_than_the_balance() {
    one_hundred_fifty_holders(test_settings().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_fifty_concurrent_holds_without_group_commit_never_hold_more_than_the_balance()
{
    let mut settings = test_settings().await;
    settings.lock.batch_max = 1;
    one_hundred_fifty_holders(settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_racing_a_void_has_exactly_one_winner() {
    let app = Arc::new(spawn_app().await);
    app.funded_wallet("race", 40_000).await;
    for i in 0..40 {
        assert_eq!(
            app.hold(&format!("h{i}"), "race", 1_000).await.status,
            StatusCode::CREATED
        );
    }
    let mut racers = JoinSet::new();
    for i in 0..40 {
        let (a, b) = (app.clone(), app.clone());
        racers.spawn(async move {
            let hold_id = format!("h{i}");
            let (capture, void) = tokio::join!(a.capture(&hold_id, Some(600)), b.void(&hold_id));
            (capture, void)
        });
    }
    let mut captured = 0;
    for (capture, void) in racers.join_all().await {
        let won = [capture.status, void.status];
        assert!(
            won == [StatusCode::OK, StatusCode::CONFLICT]
                || won == [StatusCode::CONFLICT, StatusCode::OK],
            "one winner: {} / {}",
            capture.text,
            void.text
        );
        let loser = if capture.status == StatusCode::OK {
            &void
        } else {
            &capture
        };
        let winner = if capture.status == StatusCode::OK {
            &capture
        } else {
            &void
        };
        assert_eq!(loser.code(), "hold_not_open");
        assert_eq!(loser.json()["hold"]["status"], winner.json()["status"]);
        if capture.status == StatusCode::OK {
            captured += 1;
        }
    }
    let balance = 40_000 - 600 * captured;
    assert_eq!(
        app.funds("race").await,
        [balance.to_string(), "0".into(), balance.to_string()]
    );
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_expire_at_their_deadline_and_a_capture_racing_the_expiry_has_one_winner() {
    let mut settings = test_settings().await;
    settings.holds.sweep_interval = Duration::from_millis(50);
    let app = Arc::new(spawn_app_with(settings).await);
    app.funded_wallet("late", 31_000).await;
    // h30 is never captured: at least one hold expires.
    for i in 0..31 {
        let reply = app
            .post(
                "/api/v1/holds",
                &json!({ "holdId": format!("h{i}"), "userId": "late", "amount": "1000", "expiresInSeconds": 1 }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    // Captures spread over the deadline: each is either first (200) or finds the hold
    // expired (409 with the hold EXPIRED), never both.
    let mut capturers = JoinSet::new();
    for i in 0..30u64 {
        let app = app.clone();
        capturers.spawn(async move {
            tokio::time::sleep(Duration::from_millis(800 + 15 * i)).await;
            app.capture(&format!("h{i}"), None).await
        });
    }
    let mut captured = 0;
    for reply in capturers.join_all().await {
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.json()["status"], "CAPTURED");
                captured += 1;
            }
            StatusCode::CONFLICT => assert_eq!(reply.json()["hold"]["status"], "EXPIRED"),
            other => panic!("{other}: {}", reply.text),
        }
    }
    let all_settled = eventually(Duration::from_secs(5), || async {
        app.count("SELECT COUNT(*) FROM holds WHERE status = 'HELD'")
            .await
            == 0
    })
    .await;
    assert!(
        all_settled,
        "the sweeper releases every hold past its deadline"
    );
    let expired = app
        .count("SELECT COUNT(*) FROM holds WHERE status = 'EXPIRED'")
        .await;
    assert_eq!(expired, 31 - captured);
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains("wallet_holds_expired_total"),
        "the sweeper counts what it expired"
    );
    let balance = 31_000 - 1_000 * captured;
    assert_eq!(
        app.funds("late").await,
        [balance.to_string(), "0".into(), balance.to_string()]
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE event_type = 'hold.expired'")
            .await,
        expired
    );
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_placed_on_one_instance_are_settled_on_another_in_fallback_mode() {
    let settings = test_settings().await;
    let on_redis = Arc::new(spawn_app_with(settings.clone()).await);
    let mut fallback = settings;
    fallback.lock.mode = LockMode::Mysql;
    let on_mysql = Arc::new(spawn_app_with(fallback).await);
    on_redis.funded_wallet("two", 60_000).await;

    // 60 holds, placed alternately on each instance, then each captured (600) on one
    // instance and voided on the other at once.
    let apps = [on_redis.clone(), on_mysql.clone()];
    let mut placing = JoinSet::new();
    for i in 0..60 {
        let app = apps[i % 2].clone();
        placing.spawn(async move { app.hold(&format!("h{i}"), "two", 1_000).await.status });
    }
    assert!(placing
        .join_all()
        .await
        .iter()
        .all(|s| *s == StatusCode::CREATED));
    let mut settling = JoinSet::new();
    for i in 0..60 {
        let (capturer, voider) = (apps[i % 2].clone(), apps[(i + 1) % 2].clone());
        settling.spawn(async move {
            let hold_id = format!("h{i}");
            let (c, v) = tokio::join!(capturer.capture(&hold_id, Some(600)), voider.void(&hold_id));
            (c.status, v.status)
        });
    }
    let mut captured = 0;
    for (capture, void) in settling.join_all().await {
        assert!(
            [capture, void] == [StatusCode::OK, StatusCode::CONFLICT]
                || [capture, void] == [StatusCode::CONFLICT, StatusCode::OK],
            "{capture} {void}"
        );
        captured += i64::from(capture == StatusCode::OK);
    }
    let balance = 60_000 - 600 * captured;
    assert_eq!(
        on_mysql.funds("two").await,
        [balance.to_string(), "0".into(), balance.to_string()]
    );
    on_redis.assert_ledger_invariants().await;
}

#[tokio::test]
async fn hold_requests_replayed_after_the_cache_is_forgotten_answer_from_the_database() {
    let app = spawn_app().await;
    app.funded_wallet("dee", 10_000).await;
    let placed = [
        app.hold("h1", "dee", 4_000).await,
        app.hold("h2", "dee", 1_000).await,
    ];
    let captured = app.capture("h1", Some(2_500)).await;
    let voided = app.void("h2").await;
    assert_eq!(captured.status, StatusCode::OK);
    assert_eq!(voided.status, StatusCode::OK);

    app.forget_cached_replies().await;
    let again = [
        app.hold("h1", "dee", 4_000).await,
        app.hold("h2", "dee", 1_000).await,
    ];
    for (first, repeat) in placed.iter().zip(&again) {
        assert_eq!(repeat.status, StatusCode::OK);
        assert!(repeat.replayed);
        assert_eq!(
            repeat.json(),
            first.json(),
            "the first answer, from the database"
        );
    }
    let recaptured = app.capture("h1", Some(2_500)).await;
    assert_eq!(
        (recaptured.status, recaptured.json()),
        (StatusCode::OK, captured.json())
    );
    let revoided = app.void("h2").await;
    assert_eq!(
        (revoided.status, revoided.json()),
        (StatusCode::OK, voided.json())
    );
    assert_eq!(app.capture("h2", None).await.code(), "hold_not_open");

    assert_eq!(app.funds("dee").await, ["7500", "0", "7500"]);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM ledger_entries WHERE reference IN ('h1', 'h2')")
            .await,
        4
    );
    app.assert_ledger_invariants().await;
}
