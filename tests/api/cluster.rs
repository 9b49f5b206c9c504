//! Redis Cluster mode (`WALLET_REDIS_CLUSTER_NODES`): batches whose wallets and keys
//! live on different nodes, and a primary killed while two instances pay on it. Each
//! test starts a cluster of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::task::JoinSet;
use wallet::configuration::{LockMode, Settings};

use crate::support::servers::RedisCluster;
use crate::support::{counter, eventually, spawn_app_with, test_settings, TestApp};

async fn cluster_settings(cluster: &RedisCluster, mode: LockMode) -> Settings {
    let mut settings = test_settings().await;
    settings.redis.cluster_nodes = cluster.urls();
    settings.lock.mode = mode;
    settings
}

/// When each of the wallet's payments was written: one batch writes its rows at one
/// instant.
async fn batch_instants(app: &TestApp, user_id: &str) -> usize {
    let instants: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT DISTINCT created_at FROM payments WHERE user_id = ?")
            .bind(user_id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    instants.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_payments_run_on_the_redis_path_in_batches() {
    let cluster = RedisCluster::start(3, 0);
    // `redis`: the breaker never sends the whole service to the fallback.
    let mut settings = cluster_settings(&cluster, LockMode::Redis).await;
    settings.redis.command_timeout = Duration::from_secs(2);
    let app = Arc::new(spawn_app_with(settings).await);
    app.funded_wallet("hot", 100_000).await;
    for w in 0..20 {
        app.funded_wallet(&format!("w{w}"), 10_000).await;
    }

    // 150 payers on one wallet (room for 100), 200 on twenty wallets whose keys and
    // orders' keys fall on every node.
    let mut paying = JoinSet::new();
    for i in 0..150 {
        let app = app.clone();
        paying.spawn(async move { ("hot", app.pay(&format!("hot-{i}"), "hot", 1_000).await) });
    }
    for i in 0..200 {
        let app = app.clone();
        paying.spawn(async move {
            let user = format!("w{}", i % 20);
            ("spread", app.pay(&format!("spread-{i}"), &user, 500).await)
        });
    }
    let mut created: HashMap<&str, usize> = HashMap::new();
    while let Some(paid) = paying.join_next().await {
        let (which, reply) = paid.unwrap();
        match reply.status {
            StatusCode::CREATED => *created.entry(which).or_default() += 1,
            StatusCode::PAYMENT_REQUIRED if which == "hot" => {}
            other => panic!("{which}: {other} {}", reply.text),
        }
    }
    assert_eq!(created["hot"], 100, "exactly the balance was paid");
    assert_eq!(created["spread"], 200);
    assert_eq!(app.balance("hot").await, Decimal::ZERO);
    for w in 0..20 {
        assert_eq!(app.balance(&format!("w{w}")).await, Decimal::from(5_000));
    }

    // Sent again, every order answers as before, from the cache on its own node.
    for i in (0..200).step_by(7) {
        let again = app
            .pay(&format!("spread-{i}"), &format!("w{}", i % 20), 500)
            .await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert!(again.replayed);
    }

    // Every order's reply is cached on the node of its key: the Redis path settled it
    // (a batch on the fallback takes no claim). The metrics are the process's, shared
    // with the other tests, so the keys tell. A node slowed past the timeout by the
    // suite's other tests may send a batch to the fallback now and then; a cluster the
    // service could not use would send them all.
    let pattern = format!("{}:idem:*:payment:*", app.settings.redis.key_prefix);
    let cached: usize = cluster
        .nodes
        .iter()
        .map(|node| node.cli(&["--scan", "--pattern", &pattern]).lines().count())
        .sum();
    assert!(cached >= 300 * 95 / 100, "{cached} of 300 payments cached");
    let ready = app.get("/readyz").await;
    assert!(
        ready.text.contains(r#""lockMode":"redis""#),
        "{}",
        ready.text
    );
    assert!(
        batch_instants(&app, "hot").await < 100,
        "the hot wallet's payments went in batches"
    );
    for node in &cluster.nodes {
        assert!(node.key_count() > 0, "every node holds keys");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_under_load_loses_no_payment_and_charges_none_twice() {
    let mut cluster = RedisCluster::start(3, 1);
    let settings = cluster_settings(&cluster, LockMode::Auto).await;
    let one = Arc::new(spawn_app_with(settings.clone()).await);
    let two = Arc::new(spawn_app_with(settings).await);
    let wallets = 30;
    for w in 0..wallets {
        one.funded_wallet(&format!("w{w}"), 1_000_000).await;
    }

    // Two instances pay for six seconds, each order sent to both; a primary dies after two.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut paying = JoinSet::new();
    for payer in 0..40 {
        let apps = [one.clone(), two.clone()];
        paying.spawn(async move {
            let mut answered = Vec::new();
            let mut n = 0;
            while tokio::time::Instant::now() < deadline {
                let order = format!("p{payer}-{n}");
                let user = format!("w{}", (payer + n) % wallets);
                let replies = tokio::join!(
                    apps[0].pay(&order, &user, 100),
                    apps[1].pay(&order, &user, 100)
                );
                for reply in [replies.0, replies.1] {
                    if reply.status == StatusCode::CREATED {
                        answered.push((order.clone(), user.clone()));
                    }
                }
                n += 1;
            }
            answered
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = cluster.primaries()[0];
    cluster.nodes[victim].kill();

    let mut acknowledged: HashSet<(String, String)> = HashSet::new();
    while let Some(answered) = paying.join_next().await {
        acknowledged.extend(answered.unwrap());
    }
    assert!(!acknowledged.is_empty());

    // Each order charged once, every acknowledged one present, money conserved.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT CAST(order_id AS CHAR), CAST(user_id AS CHAR) FROM payments")
            .fetch_all(&one.db)
            .await
            .unwrap();
    let written: HashSet<(String, String)> = rows.iter().cloned().collect();
    assert_eq!(written.len(), rows.len(), "no order charged twice");
    assert!(
        acknowledged.is_subset(&written),
        "every acknowledged payment was written"
    );
    for w in 0..wallets {
        let user = format!("w{w}");
        let paid = rows.iter().filter(|(_, u)| *u == user).count() as u64;
        assert_eq!(
            one.balance(&user).await,
            Decimal::from(1_000_000 - 100 * paid),
            "{user}: balance and payments agree"
        );
    }

    // Both instances come back to the Redis path by themselves.
    for app in [&one, &two] {
        let back = eventually(Duration::from_secs(20), || async {
            let ready = app.get("/readyz").await;
            ready.text.contains(r#""lockMode":"redis""#)
        })
        .await;
        assert!(back, "the instance returned to the Redis path");
    }
    let fallback = counter(&one, "wallet_mysql_fallback_total").await
        + counter(&two, "wallet_mysql_fallback_total").await;
    eprintln!(
        "primary killed under load: {} payments, {fallback} movements on the fallback ({:.1} %; \
         the process's counter, alone only when this test runs alone)",
        rows.len(),
        100.0 * fallback / rows.len() as f64
    );
    let after = one.pay("after-failover", "w0", 100).await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text);
}
