//! The breaker that chooses the fallback: while Redis is unavailable, wallet writes
//! are serialised by MySQL row locks alone (`SELECT … FOR UPDATE`) plus the database's unique keys, and the service
//! keeps serving. The same batches run either way (`wallet::engine`); the fallback
//! only leaves out the Redis claims, locks and cache around them, so money never
//! depends on which path ran.
//!
//! The circuit breaker decides which path a batch takes. Closed: requests use
//! Redis. After `threshold` consecutive Redis failures it opens and requests take the
//! MySQL path. While open, its probe ([`RedisBreaker::probe`]) pings Redis every
//! `probe_interval` (the half-open check); the first answer closes it again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::configuration::LockMode;
use crate::redis_support::{bounded, SharedRedis};
use crate::telemetry::metrics;

/// Which path serialises wallet writes right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveMode {
    Redis,
    MysqlFallback,
}

impl ActiveMode {
    /// The name `/readyz` and the logs use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::MysqlFallback => "mysql-fallback",
        }
    }
}

/// Shared by every request of one instance; cheap to clone.
#[derive(Clone)]
pub struct RedisBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    configured: LockMode,
    open: AtomicBool,
    failures: AtomicU32,
    threshold: u32,
    probe_interval: Duration,
    timeout: Duration,
    redis: SharedRedis,
    wake_probe: tokio::sync::Notify,
}

impl RedisBreaker {
    /// Builds the breaker, closed; [`RedisBreaker::probe`] is the task that closes it
    /// again once it opened.
    pub fn new(
        configured: LockMode,
        redis: SharedRedis,
        threshold: u32,
        probe_interval: Duration,
        timeout: Duration,
    ) -> Self {
        let inner = Arc::new(Inner {
            configured,
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            probe_interval,
            timeout,
            redis,
            wake_probe: tokio::sync::Notify::new(),
        });
        let breaker = Self { inner };
        metrics::lock_mode(breaker.mode().as_str());
        breaker
    }

    /// The configured mode (`auto`, `redis` or `mysql`).
    pub fn configured(&self) -> LockMode {
        self.inner.configured
    }

    /// The path a request should take now.
    pub fn mode(&self) -> ActiveMode {
        match self.inner.configured {
            LockMode::Mysql => ActiveMode::MysqlFallback,
            LockMode::Redis => ActiveMode::Redis,
            LockMode::Auto if self.inner.open.load(Ordering::Acquire) => ActiveMode::MysqlFallback,
            LockMode::Auto => ActiveMode::Redis,
        }
    }

    pub fn record_success(&self) {
        self.inner.failures.store(0, Ordering::Release);
    }

    pub fn record_failure(&self, error: &dyn std::error::Error) {
        let failures = self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.inner.configured == LockMode::Auto
            && failures >= self.inner.threshold
            && !self.inner.open.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(error = %error, failures, "redis unavailable: lock mode mysql-fallback");
            metrics::lock_mode(ActiveMode::MysqlFallback.as_str());
            self.inner.wake_probe.notify_one();
        }
    }

    /// Pings Redis while the breaker is open and closes it on the first answer; runs
    /// until the application stops.
    pub async fn probe(self) {
        let inner = &self.inner;
        loop {
            if !inner.open.load(Ordering::Acquire) {
                inner.wake_probe.notified().await;
                continue;
            }
            tokio::time::sleep(inner.probe_interval).await;
            let pong = async {
                let mut conn = inner.redis.connection().await?;
                bounded(
                    inner.timeout,
                    redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                )
                .await
            }
            .await;
            if pong.is_err() {
                inner.redis.reset();
            }
            if pong.is_ok() {
                inner.failures.store(0, Ordering::Release);
                inner.open.store(false, Ordering::Release);
                tracing::info!("redis answers again: lock mode redis");
                metrics::lock_mode(ActiveMode::Redis.as_str());
            }
        }
    }
}
