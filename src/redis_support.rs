//! What the Redis-backed parts share: key layout, a bounded call, one error type.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;

use crate::domain::Identifier;

/// Why a Redis call did not give an answer. Every variant means "Redis is not usable
/// right now" to the circuit breaker.
#[derive(Debug, thiserror::Error)]
pub enum RedisFault {
    #[error("redis command failed")]
    Command(#[from] redis::RedisError),
    #[error("no redis connection")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Runs one Redis call with an upper bound on its duration.
pub async fn bounded<T, E>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, RedisFault>
where
    RedisFault: From<E>,
{
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(RedisFault::from),
        Err(_) => Err(RedisFault::Timeout(limit)),
    }
}

/// Hands every message published on `channel` to `owner` for as long as it is alive
/// (`heard`, what the messages are, names them in the log). One subscriber connection,
/// which reconnects by itself.
pub async fn listen<T>(
    owner: Weak<T>,
    client: redis::Client,
    channel: String,
    heard: &'static str,
    on_message: impl Fn(&T, redis::Msg),
) {
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(mut pubsub)) = connected {
            tracing::debug!(%channel, heard, "listening");
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                on_message(&owner, message);
            }
        }
        if owner.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One multiplexed Redis connection shared by every request of the process, taken from
/// the deadpool pool and replaced from it after a failure.
///
/// A multiplexed connection pipelines concurrent commands over one socket, so sharing
/// it costs nothing; checking a connection out of the pool per request would cost a
/// `PING` round trip each time (deadpool-redis verifies every connection it hands out).
#[derive(Clone)]
pub struct SharedRedis {
    pool: deadpool_redis::Pool,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
    timeout: Duration,
}

impl SharedRedis {
    pub fn new(pool: deadpool_redis::Pool, timeout: Duration) -> Self {
        Self {
            pool,
            current: Arc::new(Mutex::new(None)),
            timeout,
        }
    }

    /// The shared connection (a cheap clone), connecting first if there is none.
    pub async fn connection(&self) -> Result<MultiplexedConnection, RedisFault> {
        if let Some(conn) = self.current.lock().expect("redis slot poisoned").clone() {
            return Ok(conn);
        }
        let pooled = bounded(self.timeout, self.pool.get()).await?;
        let conn = (*pooled).clone();
        *self.current.lock().expect("redis slot poisoned") = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the shared connection after a failure; the next call reconnects.
    pub fn reset(&self) {
        self.current.lock().expect("redis slot poisoned").take();
    }

    /// Upper bound of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The key layout. Keys of one wallet share the hash tag `{userId}`, so the lock scripts,
/// which touch the lock and its fencing counter together, also run on Redis Cluster.
#[derive(Clone, Debug)]
pub struct KeySpace {
    /// Shared: the key space is cloned with every request.
    prefix: Arc<str>,
}

impl KeySpace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into().into(),
        }
    }

    /// `wallet:wallet:{u1}:lock`, the per-wallet lock.
    pub fn lock(&self, user_id: &Identifier) -> String {
        format!("{}:wallet:{{{user_id}}}:lock", self.prefix)
    }

    /// `wallet:wallet:{u1}:fence`, the wallet's fencing-token counter.
    pub fn fence(&self, user_id: &Identifier) -> String {
        format!("{}:wallet:{{{user_id}}}:fence", self.prefix)
    }

    /// `wallet:idem:payment:{order-1}`, the cached reply of one request.
    pub fn idempotency(&self, scope: &str, id: &Identifier) -> String {
        format!("{}:idem:{scope}:{{{id}}}", self.prefix)
    }

    /// `wallet:wallet:{u1}:contended`, set while someone waits for the lock, so a
    /// release announces itself only when somebody listens.
    pub fn contended(&self, user_id: &Identifier) -> String {
        format!("{}:wallet:{{{user_id}}}:contended", self.prefix)
    }

    /// The channel on which lock releases are announced.
    pub fn release_channel(&self) -> String {
        format!("{}:lock-released", self.prefix)
    }

    /// The channel on which instances say they wrote records to a topic
    /// ([`crate::kafka::wakeups`]).
    pub fn records_channel(&self) -> String {
        format!("{}:kafka-records", self.prefix)
    }
}
