//! Redis behind Sentinel (`WALLET_REDIS_SENTINELS`): the service finds the primary
//! through the Sentinels, authenticates to it, pays on the Redis path, and follows a failover. Each test
//! starts a primary, a replica and three Sentinels of its own.

use reqwest::StatusCode;
use wallet::configuration::LockMode;

use crate::support::servers::RedisSentinels;
use crate::support::{primary_killed_under_load, spawn_app_with, test_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_sentinel_payments_run_on_the_primary_it_names() {
    let deployment = RedisSentinels::start();
    let mut settings = test_settings().await;
    settings.redis.url = "redis://127.0.0.1:1".into(); // never used with Sentinels
    settings.redis.sentinels = deployment.urls();
    settings.redis.sentinel_master = deployment.master.clone();
    settings.redis.sentinel_master_password = Some(deployment.password.clone());
    settings.lock.mode = LockMode::Redis;
    let app = spawn_app_with(settings).await;
    app.funded_wallet("u1", 10_000).await;
    for i in 0..20 {
        let paid = app.pay(&format!("o{i}"), "u1", 100).await;
        assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    }
    // Lock mode redis has no fallback: every payment ran on the Redis path, and its
    // reply is cached on the primary (the metrics are the process's, shared with the
    // other tests, so the keys tell).
    let pattern = format!("{}:request:*:payment:*", app.settings.redis.key_prefix);
    let cached = deployment.primary.cli(&[
        "-a",
        &deployment.password,
        "--no-auth-warning",
        "--scan",
        "--pattern",
        &pattern,
    ]);
    assert_eq!(cached.lines().count(), 20, "{cached}");
    let ready = app.get("/readyz").await;
    assert!(ready.text.contains(r#""redis":"up""#), "{}", ready.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_behind_sentinel_loses_no_payment_and_charges_none_twice() {
    let mut deployment = RedisSentinels::start();
    let mut settings = test_settings().await;
    settings.redis.sentinels = deployment.urls();
    settings.redis.sentinel_master = deployment.master.clone();
    settings.redis.sentinel_master_password = Some(deployment.password.clone());
    settings.lock.mode = LockMode::Auto;
    let replica = deployment.replica.port;
    primary_killed_under_load(settings, "the Sentinel-named primary killed", || {
        deployment.primary.kill()
    })
    .await;
    assert_eq!(
        deployment.primary_port(),
        Some(replica),
        "the Sentinels promoted the replica"
    );
}
