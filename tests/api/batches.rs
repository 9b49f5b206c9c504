//! Group commit: what one batch carries, a lease lost in the middle of one, and batches
//! of two instances on the same wallets while one of them is in fallback mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::task::JoinSet;
use wallet::configuration::LockMode;
use wallet::domain::Identifier;
use wallet::redis_support::KeySpace;

use crate::support::{
    counter, eventually, hold_wallet, key_gone, pay_in_background, spawn_app_with, test_settings,
    Reply, TestApp,
};

/// When each order's payment was written: one batch writes all its rows at one instant.
async fn written_at(app: &TestApp, order_id: &str) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT created_at FROM payments WHERE order_id = ?")
        .bind(order_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Gives requests sent in the background the time to reach the engine's queue. The
/// queue is in memory and a queued request has no claim yet (its key is claimed when
/// its batch starts), so nothing outside shows it has arrived: a fixed wait.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_batch_mixes_fresh_debits_replays_a_duplicate_and_an_overdraw() {
    let app = spawn_app_with(test_settings().await).await;
    app.funded_wallet("u1", 5_000).await;
    let earlier = app.pay("o-earlier", "u1", 500).await;
    assert_eq!(earlier.status, StatusCode::CREATED, "{}", earlier.text);
    // Only the database knows it now: its replay comes from the batch's read.
    app.forget_cached_replies().await;

    // The first debit's batch waits on the row the test holds; the rest queue behind it
    // and go together in the next batch.
    let held = hold_wallet(&app, "u1").await;
    let first = pay_in_background(&app, "o-first", "u1", 1_000);
    assert!(
        app.claim_pending("o-first", "u1").await,
        "the first batch waits on the row"
    );
    let sent = [
        ("o-fresh", 1_000),
        ("o-earlier", 500),
        ("o-dup", 1_000),
        ("o-dup", 1_000),
        ("o-over", 100_000),
    ];
    // In this order, a little apart: a key goes into a batch once, so the second o-dup
    // (and o-over behind it, the same wallet's later request) wait for the batch after.
    let mut queued = Vec::new();
    for (order_id, amount) in sent {
        queued.push(pay_in_background(&app, order_id, "u1", amount));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    settle().await;
    held.rollback().await.unwrap();

    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    let mut replies: Vec<Reply> = Vec::new();
    for reply in queued {
        replies.push(reply.await.unwrap());
    }
    let by_order = |order_id: &str| -> Vec<&Reply> {
        sent.iter()
            .zip(&replies)
            .filter(|((id, _), _)| *id == order_id)
            .map(|(_, reply)| reply)
            .collect()
    };
    assert_eq!(by_order("o-fresh")[0].status, StatusCode::CREATED);
    let earlier_again = by_order("o-earlier")[0];
    assert_eq!(
        earlier_again.status,
        StatusCode::OK,
        "{}",
        earlier_again.text
    );
    assert!(earlier_again.replayed);
    assert_eq!(
        earlier_again.json()["paymentId"],
        earlier.json()["paymentId"]
    );
    let mut dup: Vec<StatusCode> = by_order("o-dup").iter().map(|r| r.status).collect();
    dup.sort();
    assert_eq!(
        dup,
        [StatusCode::OK, StatusCode::CREATED],
        "one debit, one replay"
    );
    let dups = by_order("o-dup");
    assert_eq!(dups[0].json()["paymentId"], dups[1].json()["paymentId"]);
    let over = by_order("o-over")[0];
    assert_eq!(over.status, StatusCode::PAYMENT_REQUIRED, "{}", over.text);
    assert_eq!(over.code(), "insufficient_funds");

    assert_eq!(
        written_at(&app, "o-fresh").await,
        written_at(&app, "o-dup").await,
        "the queued debits were applied in one transaction"
    );
    assert_ne!(
        written_at(&app, "o-first").await,
        written_at(&app, "o-fresh").await,
        "the first debit had a batch of its own"
    );
    assert_eq!(
        app.balance("u1").await,
        Decimal::from(5_000 - 500 - 3 * 1_000)
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 4);
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_lost_in_the_middle_of_a_batch_commits_nothing_of_it() {
    let mut settings = test_settings().await;
    settings.lock.lease = Duration::from_millis(200);
    settings.lock.wait = Duration::from_secs(8);
    let app = spawn_app_with(settings.clone()).await;
    let twin = spawn_app_with(settings).await;
    app.funded_wallet("u1", 3_000).await;
    let lost_before = counter(&app, "wallet_lock_lease_lost_total").await;

    // The batch takes the Redis lock, then waits on the row far past its lease; the twin
    // takes the expired lock meanwhile and waits on the same row.
    let held = hold_wallet(&app, "u1").await;
    let stalled = pay_in_background(&app, "o-stalled", "u1", 1_000);
    assert!(app.claim_pending("o-stalled", "u1").await);
    let lock_key = KeySpace::new(&app.settings.redis.key_prefix)
        .lock(&Identifier::parse("userId", "u1".into()).unwrap());
    let redis = redis::Client::open(app.settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let expired = key_gone(&redis, &lock_key, Duration::from_secs(5)).await;
    assert!(
        expired,
        "the batch's lease ran out while it waited on the row"
    );
    let successor = pay_in_background(&twin, "o-successor", "u1", 1_500);
    let both_wait = eventually(Duration::from_secs(5), || async {
        app.lock_waits().await >= 2
    })
    .await;
    assert!(
        both_wait,
        "the twin's batch took the lock and waits on the row too"
    );
    held.rollback().await.unwrap();

    let stalled = stalled.await.unwrap();
    let successor = successor.await.unwrap();
    assert_eq!(stalled.status, StatusCode::CREATED, "{}", stalled.text);
    assert_eq!(successor.status, StatusCode::CREATED, "{}", successor.text);
    assert!(
        counter(&app, "wallet_lock_lease_lost_total").await > lost_before,
        "the stalled batch noticed its lease was gone and did not commit under it"
    );
    assert_eq!(app.balance("u1").await, Decimal::from(500));
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 2);
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_batch_the_same_wallets_while_one_is_in_fallback_mode() {
    let mut settings = test_settings().await;
    settings.lock.batch_max = 16;
    let on_redis = Arc::new(spawn_app_with(settings.clone()).await);
    let mut fallback = settings;
    fallback.lock.mode = LockMode::Mysql;
    let on_mysql = Arc::new(spawn_app_with(fallback).await);

    let users = ["w1", "w2", "w3", "w4", "w5"];
    for user in users {
        on_redis.funded_wallet(user, 20_000).await;
    }
    // 150 at once, spread over both instances and five wallets: batches of both
    // instances lock overlapping sets of rows, in one order.
    let mut payers = JoinSet::new();
    for i in 0..150 {
        let app = if i % 2 == 0 { &on_redis } else { &on_mysql }.clone();
        let user = users[i % users.len()];
        payers.spawn(async move {
            let order_id = format!("b-{i}");
            let reply = app.pay(&order_id, user, 700).await;
            (user, reply)
        });
    }
    let mut paid: HashMap<&str, u64> = HashMap::new();
    for (user, reply) in payers.join_all().await {
        match reply.status {
            StatusCode::CREATED => *paid.entry(user).or_default() += 700,
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    for user in users {
        let spent = paid.get(user).copied().unwrap_or_default();
        assert_eq!(on_redis.balance(user).await, Decimal::from(20_000 - spent));
        assert!(spent <= 20_000);
    }
    // 30 orders of 700 per wallet: 28 fit in 20,000, two are refused.
    assert_eq!(
        on_redis.count("SELECT COUNT(*) FROM payments").await,
        5 * 28
    );
    on_redis.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_id_from_two_wallets_is_charged_once_on_one_requests_terms() {
    let mut settings = test_settings().await;
    settings.lock.wait = Duration::from_secs(8);
    let app = spawn_app_with(settings).await;
    for user in ["a", "b", "u", "v"] {
        app.funded_wallet(user, 5_000).await;
    }
    // Two batches in flight (as many as an instance runs), each waiting on a row the
    // test holds: the requests sent next queue behind them and go together.
    let held_a = hold_wallet(&app, "a").await;
    let held_b = hold_wallet(&app, "b").await;
    let first_a = pay_in_background(&app, "o-a", "a", 100);
    let first_b = pay_in_background(&app, "o-b", "b", 100);
    assert!(app.claim_pending("o-a", "a").await && app.claim_pending("o-b", "b").await);
    // Another process holds u's wallet for a while.
    let lock_key = KeySpace::new(&app.settings.redis.key_prefix)
        .lock(&Identifier::parse("userId", "u".into()).unwrap());
    let mut redis = redis::Client::open(app.settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("another-process")
        .arg("PX")
        .arg(1_500)
        .query_async(&mut redis)
        .await
        .unwrap();

    let earlier = pay_in_background(&app, "o-x", "u", 1_000);
    // Long enough for the earlier request to reach the queue first on a busy machine.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = pay_in_background(&app, "o-x", "v", 2_000);
    settle().await;
    held_a.rollback().await.unwrap();
    held_b.rollback().await.unwrap();
    assert_eq!(first_a.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(first_b.await.unwrap().status, StatusCode::CREATED);

    // The cache keys a request by its wallet, so each holds a claim of its own; the
    // order table lets one of them charge the order, on its own terms.
    let (earlier, later) = (earlier.await.unwrap(), later.await.unwrap());
    let (won, lost, winner) = if earlier.status == StatusCode::CREATED {
        (earlier, later, "u")
    } else {
        (later, earlier, "v")
    };
    assert_eq!(won.status, StatusCode::CREATED, "{}", won.text);
    assert_eq!(won.json()["userId"], winner);
    assert!(
        matches!(
            lost.code().as_str(),
            "request_in_progress" | "idempotency_key_reused"
        ),
        "the other request is refused: {}",
        lost.text
    );
    let (u, v) = (app.balance("u").await, app.balance("v").await);
    let expected = if winner == "u" {
        (4_000, 5_000)
    } else {
        (5_000, 3_000)
    };
    assert_eq!(
        (u, v),
        (Decimal::from(expected.0), Decimal::from(expected.1))
    );
    app.assert_ledger_invariants().await;
}
