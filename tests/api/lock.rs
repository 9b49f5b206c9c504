//! The wallet lock on its own: the local hand-off of a held lock under churn. Each
//! `WalletLock` built here stands for one instance of the service; two of them on the
//! same key prefix are two instances.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use wallet::configuration::Settings;
use wallet::domain::Identifier;
use wallet::lock::{LockError, WalletLock};
use wallet::redis_support::{KeySpace, SharedRedis};

use crate::helpers::{eventually, test_settings};

/// One more instance's lock on the Redis and key prefix of `settings`.
fn wallet_lock(settings: &Settings) -> WalletLock {
    let redis = &settings.redis;
    let pool = deadpool_redis::Config::from_url(&redis.url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    WalletLock::new(
        SharedRedis::new(pool, redis.command_timeout),
        redis::Client::open(redis.url.as_str()).unwrap(),
        KeySpace::new(&redis.key_prefix),
        settings.lock.clone(),
        redis.command_timeout,
        true,
    )
}

async fn connection(settings: &Settings) -> redis::aio::MultiplexedConnection {
    redis::Client::open(settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn user(id: &str) -> Identifier {
    Identifier::parse("userId", id.to_owned()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_passed_on_under_churn_is_always_taken_or_released() {
    let mut settings = test_settings().await;
    // Longer than the checks below wait: a lock left behind cannot expire in time.
    settings.lock.lease = Duration::from_secs(5);
    settings.lock.poll_interval = Duration::from_millis(2);
    let lock = wallet_lock(&settings);
    let churn = user("churn");
    let keys = KeySpace::new(&settings.redis.key_prefix);
    let lock_key = keys.lock(&churn);
    let stop = Instant::now() + Duration::from_secs(6);

    // Release announcements for the wallet, again and again: each one wakes the head of
    // the local queue.
    let waker = tokio::spawn({
        let mut conn = connection(&settings).await;
        let channel = keys.release_channel();
        async move {
            while Instant::now() < stop {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd("PUBLISH").arg(&channel).arg("churn").ignore();
                }
                let () = pipe.query_async(&mut conn).await.unwrap();
            }
        }
    });
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(connection(&settings).await);
    }
    let mut check = connection(&settings).await;
    let (mut rounds, mut held, mut timed_out) = (0, 0, 0);
    // Rounds of a burst and a quiet moment: once a burst is over nobody is left to take
    // a lock passed on, so it must have been released.
    while Instant::now() < stop {
        rounds += 1;
        let mut tasks = tokio::task::JoinSet::new();
        for conn in &conns {
            let (lock, churn, mut conn) = (lock.clone(), churn.clone(), conn.clone());
            tasks.spawn(async move {
                let wait = Duration::from_micros(rand::rng().random_range(100..4_000));
                let guard = match lock.acquire(&mut conn, &churn, Instant::now() + wait).await {
                    Ok(guard) => guard,
                    Err(LockError::Timeout) => return false,
                    Err(e) => panic!("{e}"),
                };
                let work = rand::rng().random_range(0..1_500);
                if work < 500 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(work)).await;
                }
                lock.release(&mut conn, guard).await.unwrap();
                true
            });
        }
        for acquired in tasks.join_all().await {
            if acquired {
                held += 1;
            } else {
                timed_out += 1;
            }
        }
        let released = eventually(Duration::from_millis(300), || {
            let (mut conn, key) = (check.clone(), lock_key.clone());
            async move {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                !exists
            }
        })
        .await;
        assert!(
            released,
            "round {rounds}: nobody holds the wallet's lock once everyone left"
        );
    }
    waker.await.unwrap();
    println!("{rounds} rounds, {held} acquisitions, {timed_out} timeouts");
    assert!(timed_out > 0, "some waiters gave up");

    // Another instance takes it at once.
    let other = wallet_lock(&settings);
    let guard = other
        .acquire(
            &mut check,
            &churn,
            Instant::now() + Duration::from_millis(500),
        )
        .await
        .expect("another instance acquires promptly");
    other.release(&mut check, guard).await.unwrap();
}
