//! What the Redis path takes on trust, and what happens when the trust is wrong: a
//! fresh claim for a record the database already has, a wallet's noted funds made
//! stale by the fallback path or wrong in Redis itself, another instance reading the
//! note, and two instances taking turns on one hot wallet.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;
use tokio::task::JoinSet;
use wallet::configuration::LockMode;
use wallet::redis_support::KeySpace;

use crate::support::{
    connection, id, pay_in_background, spawn_app_with, test_settings, wallet_lock, Reply, TestApp,
};

fn balance_after(reply: &Reply) -> String {
    reply.json()["balanceAfter"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_claim_for_a_record_the_database_has_replays_the_record() {
    let app = spawn_app_with(test_settings().await).await;
    app.funded_wallet("u1", 10_000).await;
    let paid = app.pay("o1", "u1", 1_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    let topped = app.top_up("u1", "t1", "500").await;
    assert_eq!(topped.status, StatusCode::CREATED, "{}", topped.text);
    let refund_body = json!({ "refundId": "r1", "amount": "200", "reason": "one item" });
    let refunded = app.post("/api/v1/payments/o1/refunds", &refund_body).await;
    assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.text);
    let held = app.hold("h1", "u1", 300).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.text);
    let balance = app.balance("u1").await;

    // Redis loses every claim and reply: each key is claimed fresh again, and only the
    // database knows the records.
    app.forget_cached_replies().await;
    let again = [
        (app.pay("o1", "u1", 1_000).await, &paid),
        (app.top_up("u1", "t1", "500").await, &topped),
        (
            app.post("/api/v1/payments/o1/refunds", &refund_body).await,
            &refunded,
        ),
        (app.hold("h1", "u1", 300).await, &held),
    ];
    for (reply, first) in again {
        // A replay answers 200 with the first answer's body.
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert!(reply.replayed, "{}", reply.text);
        assert_eq!(reply.json(), first.json());
    }
    // The same order id for another amount, and a payment under the hold's order id:
    // refused as reused keys, from the database.
    app.forget_cached_replies().await;
    for reply in [
        app.pay("o1", "u1", 999).await,
        app.pay("h1", "u1", 300).await,
    ] {
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert_eq!(reply.json()["code"], "idempotency_key_reused");
    }
    assert_eq!(app.balance("u1").await, balance);
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM top_ups").await, 2);
    assert_eq!(app.count("SELECT COUNT(*) FROM refunds").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM holds").await, 1);
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noted_wallet_written_past_the_lock_is_read_again() {
    let settings = test_settings().await;
    let remembering = spawn_app_with(settings.clone()).await;
    let other = spawn_app_with(settings.clone()).await;
    let mut fallback = settings;
    fallback.lock.mode = LockMode::Mysql;
    let fallback = spawn_app_with(fallback).await;
    remembering.funded_wallet("u1", 10_000).await;

    // The first instance commits and notes 9,000 in the lock.
    let first = remembering.pay("o1", "u1", 1_000).await;
    assert_eq!(balance_after(&first), "9000", "{}", first.text);
    // The fallback path takes 8,500 without a Redis lock: 500 remain.
    let elsewhere = fallback.pay("o2", "u1", 8_500).await;
    assert_eq!(balance_after(&elsewhere), "500", "{}", elsewhere.text);
    // By the note, 1,000 would fit; the row says it does not.
    let refused = remembering.pay("o3", "u1", 1_000).await;
    assert_eq!(
        refused.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        refused.text
    );
    // Another instance on the Redis path tops up 10,000: 10,500, noted.
    let topped = other.top_up("u1", "t1", "10000").await;
    assert_eq!(topped.status, StatusCode::CREATED, "{}", topped.text);
    // The note it left says 3,000 fits, and so does the row.
    let paid = remembering.pay("o4", "u1", 3_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(balance_after(&paid), "7500");
    // And the fallback path again, then the first instance: the note of 7,500 is
    // wrong by 2,000 and its answer is not.
    assert_eq!(
        fallback.pay("o5", "u1", 2_000).await.status,
        StatusCode::CREATED
    );
    let last = remembering.pay("o6", "u1", 100).await;
    assert_eq!(balance_after(&last), "5400", "{}", last.text);

    assert_eq!(remembering.balance("u1").await, Decimal::from(5_400));
    remembering.assert_ledger_invariants().await;
}

/// Redis holds a wrong note under the right token (a failover to a replica that lagged
/// behind, a snapshot restored): the wallet is decided by its row all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_note_in_redis_is_caught_by_the_wallet_update() {
    let app = spawn_app_with(test_settings().await).await;
    app.funded_wallet("u1", 10_000).await;
    let fence_key = KeySpace::new(&app.settings.redis.key_prefix).fence(&id("u1"));
    let client = redis::Client::open(app.settings.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Puts `funds` in the note under the token the last holder left; returns the note
    // that holder wrote (balance and sum held, as the commit left them).
    let mut replace_note = async |funds: &str| -> (Decimal, Decimal) {
        let found: String = conn.get(&fence_key).await.unwrap();
        let (token, note) = found.split_once('|').expect("the last holder left a note");
        let _: () = conn
            .set(&fence_key, format!("{token}|{funds}"))
            .await
            .unwrap();
        let (balance, held) = note.split_once(':').unwrap();
        (balance.parse().unwrap(), held.parse().unwrap())
    };
    let funds = |balance: i64, held: i64| (Decimal::from(balance), Decimal::from(held));

    // Noted far richer than it is: the payment the note allows is refused by the row.
    assert_eq!(replace_note("1000000:0").await, funds(10_000, 0));
    let refused = app.pay("o1", "u1", 20_000).await;
    assert_eq!(
        refused.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        refused.text
    );
    // Noted poorer than it is: the payment the note refuses is made by the row.
    assert_eq!(replace_note("10:0").await, funds(10_000, 0));
    let paid = app.pay("o2", "u1", 2_000).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(balance_after(&paid), "8000");
    // The right balance and a wrong sum held.
    assert_eq!(replace_note("8000:7500").await, funds(8_000, 0));
    let paid = app.pay("o3", "u1", 1_000).await;
    assert_eq!(balance_after(&paid), "7000", "{}", paid.text);

    assert_eq!(app.balance("u1").await, Decimal::from(7_000));
    app.assert_ledger_invariants().await;
}

/// A wrong note and a batch that nets to nothing on its wallet: a payment the row cannot
/// cover and a top-up of the same amount. No funds change, and the wallet's row is
/// checked all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noted_wallet_whose_batch_nets_to_nothing_is_checked() {
    let app = Arc::new(spawn_app_with(test_settings().await).await);
    app.funded_wallet("u1", 10_000).await;
    // The test holds the wallet's lock as another instance would, while a payment of
    // 20,000 and a top-up of 20,000 queue for it; its release leaves a note of
    // 1,000,000 and wakes them.
    let lock = wallet_lock(&app.settings);
    let conn = connection(&app.settings).await;
    let (mut locks, _) = lock.acquire_batch(&conn, &[id("u1")]).await.unwrap();
    assert!(locks.fence("u1").is_some());
    let paying = pay_in_background(&app, "o1", "u1", 20_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let topping = {
        let app = app.clone();
        tokio::spawn(async move { app.top_up("u1", "t1", "20000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    locks.leave_note("u1", "1000000:0".to_owned());
    lock.release_batch(&conn, locks).await.unwrap();

    let paid = paying.await.unwrap();
    assert_eq!(paid.status, StatusCode::PAYMENT_REQUIRED, "{}", paid.text);
    let topped = topping.await.unwrap();
    assert_eq!(topped.status, StatusCode::CREATED, "{}", topped.text);
    assert_eq!(balance_after(&topped), "30000");
    assert_eq!(app.balance("u1").await, Decimal::from(30_000));
    app.assert_ledger_invariants().await;
}

/// Two instances on the Redis path pay from one wallet at once: each gets the wallet in
/// turn, and neither's payments wait until they time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_take_turns_on_one_hot_wallet() {
    let settings = test_settings().await;
    let apps = [
        Arc::new(spawn_app_with(settings.clone()).await),
        Arc::new(spawn_app_with(settings).await),
    ];
    apps[0].funded_wallet("hot", 1_000_000).await;
    let mut payers = JoinSet::new();
    for i in 0..200 {
        let app: Arc<TestApp> = apps[i % 2].clone();
        payers.spawn(async move {
            let started = std::time::Instant::now();
            let reply = app.pay(&format!("o-{i}"), "hot", 1_000).await;
            (i % 2, reply, started.elapsed())
        });
    }
    let mut waited = [Vec::new(), Vec::new()];
    for (instance, reply, elapsed) in payers.join_all().await {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        waited[instance].push(elapsed);
    }
    for (instance, times) in waited.iter_mut().enumerate() {
        times.sort();
        println!(
            "instance {instance}: {} payments, median {:?}, slowest {:?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    assert_eq!(apps[0].balance("hot").await, Decimal::from(800_000));
    apps[0].assert_ledger_invariants().await;
}
