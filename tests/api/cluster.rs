//! Redis Cluster mode (`WALLET_REDIS_CLUSTER_NODES`): batches whose wallets and keys
//! live on different nodes, and a primary killed while two instances pay on it. Each
//! test starts a cluster of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::task::JoinSet;
use wallet::configuration::{LockMode, Settings};

use crate::support::servers::RedisCluster;
use crate::support::{primary_killed_under_load, spawn_app_with, test_settings, TestApp};

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

    // A hold's placement is claimed under the hold's own hash tag, in another slot than
    // its wallet's lock: the batch's start and end send it in a call of its own.
    for w in 0..5 {
        let (hold, user) = (format!("h{w}"), format!("w{w}"));
        let placed = app.hold(&hold, &user, 100).await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
        let captured = app.capture(&hold, None).await;
        assert_eq!(captured.status, StatusCode::OK, "{}", captured.text);
        assert_eq!(app.balance(&user).await, Decimal::from(4_900));
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
    let victim = cluster.primaries()[0];
    primary_killed_under_load(settings, "a cluster primary", || {
        cluster.nodes[victim].kill()
    })
    .await;
}
