//! The wallet lock on its own: fencing tokens across a Redis data loss, and locks that
//! are always released under churn. Each `WalletLock` built here stands for one
//! instance of the service; two of them on the same key prefix are two instances.

use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::time::Instant;
use wallet::domain::Identifier;
use wallet::lock::{batch_begin_script, BatchLocks, WalletLock, REFENCE_MARGIN};
use wallet::redis_support::KeySpace;
use wallet::store::wallets::apply_delta;

use crate::support::servers::OwnServer;
use crate::support::{connection, key_gone, spawn_app, spawn_app_with, test_settings, wallet_lock};

/// Takes `user_id`'s lock as a batch of one would; `None` while someone else holds it.
async fn take(
    lock: &WalletLock,
    conn: &mut redis::aio::MultiplexedConnection,
    user_id: &Identifier,
) -> Option<(BatchLocks, u64)> {
    let (locks, _) = lock
        .acquire_batch(conn, std::slice::from_ref(user_id))
        .await
        .unwrap();
    let fence = locks.fence(user_id.as_str())?;
    Some((locks, fence))
}

/// [`take`], waiting for the lock while it is held elsewhere, at most until `deadline`.
async fn take_by(
    lock: &WalletLock,
    conn: &mut redis::aio::MultiplexedConnection,
    user_id: &Identifier,
    deadline: Instant,
) -> Option<(BatchLocks, u64)> {
    loop {
        if let Some(taken) = take(lock, conn, user_id).await {
            return Some(taken);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn user(id: &str) -> Identifier {
    Identifier::parse("userId", id.to_owned()).unwrap()
}

async fn fence_of(app: &crate::support::TestApp, user_id: &str) -> u64 {
    sqlx::query_scalar("SELECT fence_token FROM wallets WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_after_redis_lost_its_data_is_above_every_earlier_one() {
    let redis = OwnServer::redis();
    let mut settings = test_settings().await;
    settings.redis.url = format!("redis://{}", redis.address());
    let app = spawn_app_with(settings.clone()).await;
    // The top-up writes a token to the row.
    app.funded_wallet("u1", 1_000).await;
    let (lock, twin) = (wallet_lock(&settings), wallet_lock(&settings));
    let mut conn = connection(&settings).await;
    let u1 = user("u1");
    // Acquisitions that write nothing (a refused payment, a replay) move the counter
    // past the database's token.
    for _ in 0..3 {
        let (locks, _) = take(&lock, &mut conn, &u1).await.unwrap();
        lock.release_batch(&conn, locks).await.unwrap();
    }
    let (stale, stale_fence) = take(&lock, &mut conn, &u1).await.unwrap();
    assert!(stale_fence > fence_of(&app, "u1").await);

    // Redis loses everything while `stale` holds a token it has not written yet.
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (fresh, fresh_fence) = take(&twin, &mut conn, &u1).await.unwrap();
    assert!(
        fresh_fence > stale_fence,
        "token {fresh_fence} issued after the loss is above {stale_fence} issued before it",
    );

    // Raw writes, as each holder's transaction would make them (no ledger entry).
    let mut db = app.db.acquire().await.unwrap();
    let now = chrono::Utc::now();
    assert!(
        apply_delta(&mut db, "u1", Decimal::from(-10), Some(fresh_fence), now)
            .await
            .unwrap(),
        "the new holder writes"
    );
    assert!(
        !apply_delta(&mut db, "u1", Decimal::from(-10), Some(stale_fence), now)
            .await
            .unwrap(),
        "the holder from before the loss is refused"
    );
    assert_eq!(fence_of(&app, "u1").await, fresh_fence);
    assert_eq!(app.balance("u1").await, Decimal::from(990));
    twin.release_batch(&conn, fresh).await.unwrap();
    lock.release_batch(&conn, stale).await.unwrap();

    // The service itself goes on debiting after the loss.
    let paid = app.pay("after-loss", "u1", 5).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(app.balance("u1").await, Decimal::from(985));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_from_before_a_redis_data_loss_cannot_write_a_wallet_the_database_never_fenced() {
    let redis = OwnServer::redis();
    let mut settings = test_settings().await;
    settings.redis.url = format!("redis://{}", redis.address());
    let app = spawn_app_with(settings.clone()).await;
    // A new wallet: the database has seen no token yet.
    app.funded_wallet("u2", 0).await;
    assert_eq!(fence_of(&app, "u2").await, 0);
    let lock = wallet_lock(&settings);
    let mut conn = connection(&settings).await;
    let u2 = user("u2");
    for _ in 0..3 {
        let (locks, _) = take(&lock, &mut conn, &u2).await.unwrap();
        lock.release_batch(&conn, locks).await.unwrap();
    }
    let (stale, stale_fence) = take(&lock, &mut conn, &u2).await.unwrap();

    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // Another instance tops the wallet up after the loss.
    let top_up = app.top_up("u2", "after-loss", "100").await;
    assert_eq!(top_up.status, StatusCode::CREATED, "{}", top_up.text);
    let written = fence_of(&app, "u2").await;
    assert!(
        written > stale_fence,
        "the row's token {written} is above the earlier holder's {stale_fence}",
    );

    let mut db = app.db.acquire().await.unwrap();
    assert!(
        !apply_delta(
            &mut db,
            "u2",
            Decimal::from(-40),
            Some(stale_fence),
            chrono::Utc::now()
        )
        .await
        .unwrap(),
        "the holder from before the loss is refused"
    );
    assert_eq!(app.balance("u2").await, Decimal::from(100));
    lock.release_batch(&conn, stale).await.unwrap();
}

/// The batch start's script (`lua/batch_begin.lua`) run twice with the same arguments,
/// as a cluster client does when it sends a pipeline again after a redirect or a broken
/// connection: the second run answers what the first did (the key claimed, the lock
/// taken under the same token), and another owner still finds both taken.
#[tokio::test]
async fn a_batch_start_sent_twice_answers_the_same_both_times() {
    let app = spawn_app().await;
    let mut conn = connection(&app.settings).await;
    let begin = batch_begin_script();
    let keys = KeySpace::new(&app.settings.redis.key_prefix);
    let u9 = user("u9");
    let o1 = Identifier::parse("orderId", "o1".to_owned()).unwrap();
    let start = |owner: &str, claim_owner: &str| {
        let mut call = begin.prepare_invoke();
        call.key(keys.idempotency(&u9, "payment", &o1))
            .key(keys.lock(&u9))
            .key(keys.fence(&u9))
            .key(keys.contended(&u9))
            .arg(60_000)
            .arg(owner.to_owned())
            .arg(10_000)
            .arg(1)
            .arg("fingerprint")
            .arg(claim_owner.to_owned());
        call
    };
    let first: redis::Value = start("batch-a", "claim-a")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let again: redis::Value = start("batch-a", "claim-a")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let (claimed, token, found): (Vec<String>, i64, String) =
        redis::from_redis_value(first).unwrap();
    assert_eq!(claimed, ["claimed"]);
    assert!(token > 0);
    assert_eq!(found, "0");
    let (claimed_again, token_again, _): (Vec<String>, i64, String) =
        redis::from_redis_value(again).unwrap();
    assert_eq!(claimed_again, ["claimed"]);
    assert_eq!(token_again, token);

    let other: redis::Value = start("batch-b", "claim-b")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let (pending, refused, _): (Vec<redis::Value>, i64, String) =
        redis::from_redis_value(other).unwrap();
    assert_eq!(
        redis::from_redis_value::<String>(pending[0].clone()).unwrap(),
        "pending"
    );
    assert!(refused < 0, "the lock is held: {refused}");
}

#[tokio::test]
async fn a_counter_found_behind_the_database_jumps_well_past_it() {
    let app = spawn_app().await;
    app.funded_wallet("u3", 1_000).await;
    // As if Redis came back with a clock far behind the one that issued the row's token.
    let seen: u64 = fence_of(&app, "u3").await + (1 << 45);
    sqlx::query("UPDATE wallets SET fence_token = ? WHERE user_id = 'u3'")
        .bind(seen)
        .execute(&app.db)
        .await
        .unwrap();
    let lock = wallet_lock(&app.settings);
    let mut conn = connection(&app.settings).await;
    let (mut locks, fence) = take(&lock, &mut conn, &user("u3")).await.unwrap();
    assert!(fence < seen);
    assert!(lock
        .refence_batch(&mut conn, &mut locks, "u3", seen)
        .await
        .unwrap());
    // Holders from before the loss may hold tokens above the row's: the counter leaves
    // a margin's worth of them behind.
    let margin = REFENCE_MARGIN.as_micros() as u64;
    let fence = locks.fence("u3").unwrap();
    assert!(fence > seen + margin, "{fence} is well above {seen}");
    lock.release_batch(&conn, locks).await.unwrap();

    // The service takes the same path on its own and debits.
    sqlx::query("UPDATE wallets SET fence_token = fence_token + ? WHERE user_id = 'u3'")
        .bind(1u64 << 46)
        .execute(&app.db)
        .await
        .unwrap();
    let paid = app.pay("behind", "u3", 5).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_taken_under_churn_is_always_released() {
    let mut settings = test_settings().await;
    // Longer than the checks below wait: a lock left behind cannot expire in time.
    settings.lock.lease = Duration::from_secs(5);
    let lock = wallet_lock(&settings);
    let churn = user("churn");
    let keys = KeySpace::new(&settings.redis.key_prefix);
    let lock_key = keys.lock(&churn);
    let stop = Instant::now() + Duration::from_secs(6);

    // Release announcements for the wallet, again and again, as other holders make them.
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
    // Rounds of a burst and a quiet moment: once a burst is over nobody holds the lock.
    while Instant::now() < stop {
        rounds += 1;
        let mut tasks = tokio::task::JoinSet::new();
        for conn in &conns {
            let (lock, churn, mut conn) = (lock.clone(), churn.clone(), conn.clone());
            tasks.spawn(async move {
                let wait = Duration::from_micros(rand::rng().random_range(100..4_000));
                let Some((locks, _)) =
                    take_by(&lock, &mut conn, &churn, Instant::now() + wait).await
                else {
                    return false;
                };
                let work = rand::rng().random_range(0..1_500);
                if work < 500 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(work)).await;
                }
                lock.release_batch(&conn, locks).await.unwrap();
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
        let released = key_gone(&check, &lock_key, Duration::from_millis(300)).await;
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
    let (locks, _) = take_by(
        &other,
        &mut check,
        &churn,
        Instant::now() + Duration::from_millis(500),
    )
    .await
    .expect("another instance acquires promptly");
    other.release_batch(&check, locks).await.unwrap();
}
