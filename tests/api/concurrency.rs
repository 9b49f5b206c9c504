//! Real concurrent requests; assertions on the database afterwards.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::task::JoinSet;

use crate::support::{spawn_app, spawn_app_with, test_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_fifty_concurrent_payers_spend_exactly_the_balance() {
    one_hundred_fifty_payers(test_settings().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_fifty_payers_without_group_commit_spend_exactly_the_balance() {
    let mut settings = test_settings().await;
    settings.lock.batch_max = 1;
    one_hundred_fifty_payers(settings).await;
}

async fn one_hundred_fifty_payers(settings: wallet::configuration::Settings) {
    let app = Arc::new(spawn_app_with(settings).await);
    app.funded_wallet("hot", 150_000).await;

    let started = Instant::now();
    let mut payers = JoinSet::new();
    for i in 0..150 {
        let app = app.clone();
        payers.spawn(async move {
            let sent = Instant::now();
            let reply = app.pay(&format!("order-{i}"), "hot", 1_000).await;
            (reply, sent.elapsed())
        });
    }
    let (replies, mut latencies): (Vec<_>, Vec<_>) = payers.join_all().await.into_iter().unzip();
    let elapsed = started.elapsed();

    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "every payer gets 201: {:?}",
        replies
            .iter()
            .filter(|r| r.status != StatusCode::CREATED)
            .map(|r| &r.text)
            .collect::<Vec<_>>()
    );
    // Informational: the debit rate and latency of this run, never asserted.
    latencies.sort();
    println!(
        "150 concurrent debits in {elapsed:?} ({:.0}/s), p50 {:?}, p99 {:?}",
        150.0 / elapsed.as_secs_f64(),
        latencies[74],
        latencies[148]
    );

    assert_eq!(app.balance("hot").await, Decimal::ZERO);
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 150);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM ledger_entries WHERE entry_type = 'PAYMENT'")
            .await,
        150
    );
    let balances_after: HashSet<String> = replies
        .iter()
        .map(|r| r.json()["balanceAfter"].to_string())
        .collect();
    assert_eq!(balances_after.len(), 150, "each debit saw its own balance");

    let one_more = app.pay("order-150", "hot", 1_000).await;
    assert_eq!(one_more.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(one_more.code(), "insufficient_funds");
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_storm_debits_once() {
    let app = Arc::new(spawn_app().await);
    app.funded_wallet("u1", 10_000).await;

    let mut storm = JoinSet::new();
    for _ in 0..50 {
        let app = app.clone();
        storm.spawn(async move { app.pay("storm-order", "u1", 1_000).await });
    }
    let replies = storm.join_all().await;

    let created: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "exactly one request debits");
    let body = &created[0].text;
    for reply in &replies {
        match reply.status {
            StatusCode::CREATED => {}
            StatusCode::OK => {
                assert_eq!(&reply.text, body, "a replay is identical");
                assert!(reply.replayed);
            }
            StatusCode::CONFLICT => {
                assert_eq!(reply.code(), "request_in_progress");
                assert!(reply.is_problem());
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert_eq!(app.balance("u1").await, Decimal::from(9_000));
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);

    let after = app.pay("storm-order", "u1", 1_000).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(&after.text, body);
    let other_amount = app.pay("storm-order", "u1", 2_000).await;
    assert_eq!(other_amount.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_amount.code(), "idempotency_key_reused");
    app.assert_ledger_invariants().await;
}
