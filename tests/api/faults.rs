//! Faults: Redis killed mid-load, leases that expire mid-transaction, instances in
//! different lock modes. The database must hold the line in each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::task::JoinSet;
use wallet::configuration::LockMode;

use crate::support::proxy::DatabaseProxy;
use crate::support::servers::OwnServer;
use crate::support::{redis_url, spawn_app, spawn_app_with, test_settings, Reply, TestApp};

/// Every reply a debit may give under faults, and what each means for the ledger.
fn check_reply(order_id: &str, reply: &Reply) {
    match reply.status {
        StatusCode::CREATED | StatusCode::OK | StatusCode::PAYMENT_REQUIRED => {}
        StatusCode::CONFLICT => assert_eq!(reply.code(), "request_in_progress"),
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(
                ["unavailable", "lock_timeout", "request_timeout"].contains(&reply.code().as_str()),
                "{order_id}: undocumented 503 {}",
                reply.text
            );
            assert!(reply.is_problem());
        }
        other => panic!("{order_id}: unexpected {other}: {}", reply.text),
    }
}

/// Checks the outcome of a load against the database: each order is debited at most
/// once, exactly those that answered 2xx, and balances match.
async fn check_orders(
    app: &TestApp,
    replies: &HashMap<String, (String, u64, Reply)>,
    initial: &HashMap<String, u64>,
) {
    let mut debited: HashMap<&str, Decimal> = HashMap::new();
    for (order_id, (user_id, amount, reply)) in replies {
        let stored: Option<Decimal> =
            sqlx::query_scalar("SELECT amount FROM payments WHERE order_id = ?")
                .bind(order_id)
                .fetch_optional(&app.db)
                .await
                .unwrap();
        if reply.status.is_success() {
            assert_eq!(
                stored,
                Some(Decimal::from(*amount)),
                "{order_id} answered {} but is not stored",
                reply.status
            );
            *debited.entry(user_id.as_str()).or_default() += Decimal::from(*amount);
        } else if reply.status != StatusCode::CONFLICT {
            assert_eq!(
                stored, None,
                "{order_id} answered {} yet was applied",
                reply.status
            );
        } else if let Some(amount) = stored {
            *debited.entry(user_id.as_str()).or_default() += amount;
        }
    }
    for (user_id, start) in initial {
        let spent = debited.get(user_id.as_str()).copied().unwrap_or_default();
        assert_eq!(
            app.balance(user_id).await,
            Decimal::from(*start) - spent,
            "wallet {user_id}"
        );
    }
    app.assert_ledger_invariants().await;
}

/// Fires `orders` debits at `apps` (round robin) with `concurrency` in flight, and
/// signals `at_third` once a third of them have been answered.
async fn debit_load(
    apps: Vec<Arc<TestApp>>,
    orders: Vec<(String, String, u64)>,
    concurrency: usize,
    at_third: Option<tokio::sync::oneshot::Sender<()>>,
) -> HashMap<String, (String, u64, Reply)> {
    let total = orders.len();
    let done = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let at_third = Arc::new(std::sync::Mutex::new(at_third));
    let mut tasks = JoinSet::new();
    for (i, (order_id, user_id, amount)) in orders.into_iter().enumerate() {
        let app = apps[i % apps.len()].clone();
        let permits = permits.clone();
        let done = done.clone();
        let at_third = at_third.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            let reply = app.pay(&order_id, &user_id, amount).await;
            if done.fetch_add(1, Ordering::SeqCst) + 1 >= total / 3 {
                if let Some(tx) = at_third.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
            (order_id, (user_id, amount, reply))
        });
    }
    let mut replies = HashMap::new();
    for (order_id, (user_id, amount, reply)) in tasks.join_all().await {
        check_reply(&order_id, &reply);
        // An order sent twice: keep a success if there is one, it is what the client relies on.
        let keep = replies
            .get(&order_id)
            .is_none_or(|(_, _, kept): &(String, u64, Reply)| !kept.status.is_success());
        if keep {
            replies.insert(order_id, (user_id, amount, reply));
        }
    }
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (_, _, reply) in replies.values() {
        *by_status
            .entry(format!("{} {}", reply.status.as_u16(), reply.code()))
            .or_default() += 1;
    }
    println!("replies by status: {by_status:?}");
    replies
}

fn orders(prefix: &str, users: &[&str], count: usize) -> Vec<(String, String, u64)> {
    (0..count)
        .map(|i| {
            (
                format!("{prefix}-{i}"),
                users[i % users.len()].to_string(),
                100 + (i as u64 * 37) % 900,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_load_falls_back_to_mysql_and_returns() {
    let redis = Arc::new(std::sync::Mutex::new(OwnServer::redis()));
    let mut settings = test_settings().await;
    settings.redis.url = format!("redis://{}", redis.lock().unwrap().address());
    settings.redis.command_timeout = Duration::from_millis(300);
    let app = Arc::new(spawn_app_with(settings).await);
    let users = ["a", "b", "c", "d"];
    let mut initial = HashMap::new();
    for user in users {
        app.funded_wallet(user, 90_000).await;
        initial.insert(user.to_string(), 90_000);
    }
    assert!(
        app.wait_for_lock_mode("redis", Duration::from_secs(5))
            .await
    );

    let (at_third, third_reached) = tokio::sync::oneshot::channel();
    let outage = tokio::spawn({
        let app = app.clone();
        async move {
            third_reached.await.unwrap();
            redis.lock().unwrap().kill();
            let fell_back = app
                .wait_for_lock_mode("mysql-fallback", Duration::from_secs(5))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.lock().unwrap().restart();
            (fell_back, redis)
        }
    });
    let replies = debit_load(
        vec![app.clone()],
        orders("rd", &users, 600),
        24,
        Some(at_third),
    )
    .await;
    let (fell_back, _redis) = outage.await.unwrap();
    assert!(
        fell_back,
        "the breaker switched to the mysql path while redis was down"
    );
    check_orders(&app, &replies, &initial).await;
    let succeeded = replies
        .values()
        .filter(|(_, _, r)| r.status.is_success())
        .count();
    assert!(
        succeeded > 450,
        "the service kept serving: {succeeded} of 600 succeeded"
    );

    assert!(
        app.wait_for_lock_mode("redis", Duration::from_secs(10))
            .await,
        "back on redis after recovery"
    );
    // The fresh Redis lost the fencing counters; tokens follow its clock, so the next
    // one is above the database's and debits go on normally.
    let after = app.pay("after-recovery", "a", 1).await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text);
    let replay = app.pay("after-recovery", "a", 1).await;
    assert_eq!(replay.status, StatusCode::OK);
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_leases_cannot_lose_updates_overdraw_or_double_debit() {
    let mut settings = test_settings().await;
    // Every transaction stalls at its BEGIN (through a proxy in front of the database)
    // for up to 150 ms, longer than the 40 ms lease: a batch renews its leases only just
    // before it commits, so they run out mid-transaction. And the lock's key vanishes
    // under its holder now and then, as after a Redis restart. Holders overlap.
    settings.lock.lease = Duration::from_millis(40);
    settings.lock.wait = Duration::from_secs(20);
    let proxy = DatabaseProxy::in_front_of(&mut settings).await;
    // Two instances: each queues its own requests locally, so only the Redis lock (and
    // its expiring lease) stands between them.
    let app = Arc::new(spawn_app_with(settings.clone()).await);
    let twin = Arc::new(spawn_app_with(settings.clone()).await);
    app.funded_wallet("u1", 2_000).await;
    proxy.stall_transactions(Some(Duration::from_millis(150)));
    let lock_key = format!("{}:wallet:{{u1}}:lock", settings.redis.key_prefix);
    let thief = tokio::spawn(async move {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let _: Result<i64, _> = redis::cmd("DEL")
                .arg(&lock_key)
                .query_async(&mut conn)
                .await;
        }
    });
    let mut initial = HashMap::new();
    initial.insert("u1".to_string(), 2_000);

    // 30 distinct orders of 100 (only 20 fit) and every order sent twice at once.
    let mut load: Vec<(String, String, u64)> = (0..30)
        .map(|i| (format!("bl-{i}"), "u1".into(), 100))
        .collect();
    load.extend(load.clone());
    let replies = debit_load(vec![app.clone(), twin], load, 60, None).await;
    thief.abort();
    proxy.stall_transactions(None);
    check_orders(&app, &replies, &initial).await;
    let paid = app.count("SELECT COUNT(*) FROM payments").await;
    assert!(paid <= 20, "never more than the balance: {paid} payments");
    let fence: u64 = sqlx::query_scalar("SELECT fence_token FROM wallets WHERE user_id = 'u1'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(fence > 1, "writes were fenced");
}

#[tokio::test]
async fn the_database_refuses_a_stale_fencing_token() {
    let app = spawn_app().await;
    app.funded_wallet("u1", 1_000).await;
    let mut conn = app.db.acquire().await.unwrap();
    let now = chrono::Utc::now();
    use wallet::store::wallets::apply_delta;
    // Tokens follow Redis's clock: count from the one the top-up wrote.
    let top_up: u64 = sqlx::query_scalar("SELECT fence_token FROM wallets WHERE user_id = 'u1'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let token = top_up + 1_000;
    assert!(
        apply_delta(&mut conn, "u1", Decimal::from(-10), Some(token), now)
            .await
            .unwrap()
    );
    assert!(
        !apply_delta(&mut conn, "u1", Decimal::from(-10), Some(token - 1), now)
            .await
            .unwrap(),
        "older token refused"
    );
    assert!(
        !apply_delta(&mut conn, "u1", Decimal::from(-5_000), Some(token + 1), now)
            .await
            .unwrap(),
        "overdraw refused"
    );
    assert!(
        apply_delta(&mut conn, "u1", Decimal::from(-10), None, now)
            .await
            .unwrap(),
        "row-locked fallback writes"
    );
    assert_eq!(app.balance("u1").await, Decimal::from(980));
    let update = sqlx::query("UPDATE ledger_entries SET amount = 1")
        .execute(&app.db)
        .await;
    assert!(update.is_err(), "ledger entries are immutable");
    let delete = sqlx::query("DELETE FROM ledger_entries")
        .execute(&app.db)
        .await;
    assert!(delete.is_err(), "ledger entries are never deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_in_different_lock_modes_keep_the_ledger_exact() {
    let settings = test_settings().await;
    let on_redis = Arc::new(spawn_app_with(settings.clone()).await);
    let mut fallback_settings = settings;
    fallback_settings.lock.mode = LockMode::Mysql;
    let on_mysql = Arc::new(spawn_app_with(fallback_settings).await);
    assert_eq!(
        on_mysql.get("/readyz").await.json()["lockMode"],
        "mysql-fallback"
    );

    let users = ["x", "y", "z"];
    let mut initial = HashMap::new();
    for user in users {
        on_redis.funded_wallet(user, 40_000).await;
        initial.insert(user.to_string(), 40_000);
    }
    // 200 orders; every fifth is sent to both instances at once.
    let mut load = orders("ti", &users, 200);
    let doubles: Vec<_> = load.iter().step_by(5).cloned().collect();
    load.extend(doubles);
    let replies = debit_load(vec![on_redis.clone(), on_mysql.clone()], load, 32, None).await;
    check_orders(&on_redis, &replies, &initial).await;
    let paid = on_redis.count("SELECT COUNT(*) FROM payments").await;
    assert!(paid <= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_killed_mid_load_answers_503_and_every_order_converges_on_retry() {
    let mysql = Arc::new(std::sync::Mutex::new(OwnServer::mariadb()));
    let server = format!("mysql://root@{}", mysql.lock().unwrap().address());
    let admin = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE wallet")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut settings = test_settings().await;
    settings.database.url = format!("{server}/wallet");
    settings.database.acquire_timeout = Duration::from_secs(2);
    let app = Arc::new(spawn_app_with(settings).await);
    let users = ["a", "b", "c"];
    let mut initial = HashMap::new();
    for user in users {
        app.funded_wallet(user, 90_000).await;
        initial.insert(user.to_string(), 90_000);
    }

    let (at_third, third_reached) = tokio::sync::oneshot::channel();
    let outage = tokio::spawn(async move {
        third_reached.await.unwrap();
        mysql.lock().unwrap().kill();
        // Longer than the pool's acquire timeout: some requests must give up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        mysql.lock().unwrap().restart();
        mysql
    });
    let load = orders("my", &users, 300);
    let first = debit_load(vec![app.clone()], load.clone(), 24, Some(at_third)).await;
    let _mysql = outage.await.unwrap();
    let failed = first
        .values()
        .filter(|(_, _, r)| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    println!("{failed} of 300 debits answered 503 while MySQL was down");

    // A client retries what failed with the same order id: it applies at most once,
    // whether or not the failed attempt had committed.
    let mut settled = HashMap::new();
    for (order_id, user_id, amount) in load {
        let mut reply = first[&order_id].2.clone();
        for _ in 0..50 {
            if reply.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            reply = app.pay(&order_id, &user_id, amount).await;
        }
        assert!(
            [StatusCode::CREATED, StatusCode::OK].contains(&reply.status),
            "{order_id} did not converge: {} {}",
            reply.status,
            reply.text
        );
        settled.insert(order_id, (user_id, amount, reply));
    }
    check_orders(&app, &settled, &initial).await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM payments").await,
        300,
        "each order once"
    );
}
