//! Waiting on a condition instead of sleeping: a test goes on as soon as what it waits
//! for is there, and fails with a clear message when it never comes.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 100 ms until it is true or `within` passed.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls Redis (on `conn`) until `key` is gone or `within` passed: a lock released or
/// its lease run out.
pub async fn key_gone(
    conn: &redis::aio::MultiplexedConnection,
    key: &str,
    within: Duration,
) -> bool {
    eventually(within, || {
        let mut conn = conn.clone();
        async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            !exists
        }
    })
    .await
}
