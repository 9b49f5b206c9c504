//! Redis Cluster mode (`WALLET_REDIS_CLUSTER_NODES`): batches whose wallets and keys
//! live on different nodes, a primary killed while two instances pay on it, and slots
//! moved between primaries under the same load. Each test starts a cluster of its own.

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

    // Every node forgets the scripts (as after a restart): a call answered `NOSCRIPT`
    // in a node's pipeline did not run, and is sent again alone, which loads it.
    for node in &cluster.nodes {
        node.cli(&["SCRIPT", "FLUSH"]);
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
    let pattern = format!("{}:request:*:payment:*", app.settings.redis.key_prefix);
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
    primary_killed_under_load(settings, "a cluster primary killed", || {
        cluster.nodes[victim].kill()
    })
    .await;
}

/// Moves the hash slots of wallets `w0` to `w29` that one primary serves to another,
/// one slot at a time as `redis-cli --cluster reshard` does (`IMPORTING`/`MIGRATING`,
/// `MIGRATE` of the slot's keys, `SETSLOT … NODE` on every primary), while two
/// instances pay on those wallets: calls to a slot in the middle of its move are
/// answered `ASK` or `TRYAGAIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_moved_under_load_lose_no_payment_and_charge_none_twice() {
    let cluster = RedisCluster::start(3, 0);
    let settings = cluster_settings(&cluster, LockMode::Auto).await;
    let moved = std::cell::Cell::new(0);
    primary_killed_under_load(settings, "wallet slots moved between primaries", || {
        moved.set(move_wallet_slots(&cluster))
    })
    .await;
    assert!(moved.get() > 0, "some wallets' slots were moved");
    eprintln!("{} slots moved under load", moved.get());
}

/// Moves the slots of `w0`…`w29` served by the first primary to the second; returns
/// how many slots moved.
fn move_wallet_slots(cluster: &RedisCluster) -> usize {
    let node = &cluster.nodes[0];
    // `CLUSTER NODES`: id, address@bus, flags, …, then the slot ranges served.
    let listing = node.cli(&["CLUSTER", "NODES"]);
    // Each primary's id, port and slot ranges.
    type Primary = (String, u16, Vec<(u16, u16)>);
    let primaries: Vec<Primary> = listing
        .lines()
        .filter(|line| line.contains("master"))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap();
            let ranges = fields[8..]
                .iter()
                .filter_map(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    Some((from.parse().ok()?, to.parse().ok()?))
                })
                .collect();
            (fields[0].to_owned(), port, ranges)
        })
        .collect();
    let (source_id, source_port, source_ranges) = &primaries[0];
    let (target_id, target_port, _) = &primaries[1];
    let node_on = |port: u16| cluster.nodes.iter().find(|n| n.port == port).unwrap();
    let (source, target) = (node_on(*source_port), node_on(*target_port));
    let mut slots: Vec<u16> = (0..30)
        .filter_map(|w| {
            node.cli(&["CLUSTER", "KEYSLOT", &format!("w{w}")])
                .trim()
                .parse()
                .ok()
        })
        .filter(|slot| {
            source_ranges
                .iter()
                .any(|(from, to)| from <= slot && slot <= to)
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    for slot in &slots {
        let slot = slot.to_string();
        target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", source_id]);
        source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", target_id]);
        loop {
            let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = target_port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            source.cli(&migrate);
        }
        // The target first, then the source, then the others.
        target.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", target_id]);
        source.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", target_id]);
        for (_, port, _) in &primaries[2..] {
            node_on(*port).cli(&["CLUSTER", "SETSLOT", &slot, "NODE", target_id]);
        }
    }
    slots.len()
}
