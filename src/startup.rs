//! Builds the application from [`Settings`] and runs it until asked to stop.

use std::future::Future;

use anyhow::Context;
use sqlx::MySqlPool;
use tokio::net::TcpListener;

use crate::breaker::RedisBreaker;
use crate::configuration::Settings;
use crate::idempotency::IdempotencyCache;
use crate::lock::WalletLock;
use crate::redis_support::KeySpace;
use crate::wallet::WalletService;
use crate::{http, store};

/// A built, not yet running, service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    db: MySqlPool,
}

impl Application {
    /// Connects to MySQL (applying migrations) and Redis, and binds the listener.
    ///
    /// Redis need not be up: the pool connects lazily and the breaker starts the
    /// service on the MySQL path if Redis does not answer.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let lock_wait_secs = settings.lock.wait.as_secs_f64().ceil() as u64;
        let db = store::connect(&settings.database, lock_wait_secs)
            .await
            .context("connecting to MySQL")?;
        if settings.database.run_migrations {
            sqlx::migrate!("./migrations")
                .run(&db)
                .await
                .context("applying migrations")?;
        }

        let redis_settings = &settings.redis;
        let mut pool_config = deadpool_redis::Config::from_url(&redis_settings.url);
        pool_config.pool = Some(deadpool_redis::PoolConfig {
            max_size: redis_settings.pool_size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(redis_settings.command_timeout),
                create: Some(redis_settings.command_timeout),
                recycle: Some(redis_settings.command_timeout),
            },
            ..Default::default()
        });
        let redis_pool = pool_config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .context("building the Redis pool")?;
        let redis_client =
            redis::Client::open(redis_settings.url.as_str()).context("parsing WALLET_REDIS_URL")?;

        let keys = KeySpace::new(&redis_settings.key_prefix);
        let lock = WalletLock::new(
            redis_pool.clone(),
            redis_client,
            keys.clone(),
            settings.lock.clone(),
            redis_settings.command_timeout,
            !settings.faults.skip_lease_renewal,
        );
        let idempotency = IdempotencyCache::new(
            keys,
            settings.idempotency.reply_ttl,
            settings.idempotency.claim_ttl,
            redis_settings.command_timeout,
        );
        let breaker = RedisBreaker::new(
            settings.lock.mode,
            redis_pool.clone(),
            settings.lock.breaker_threshold,
            settings.lock.breaker_probe_interval,
            redis_settings.command_timeout,
        );
        let service = WalletService::new(
            db.clone(),
            redis_pool,
            lock,
            idempotency,
            breaker,
            settings.currency,
            settings.lock.wait,
            redis_settings.command_timeout,
            settings.faults.clone(),
        );

        let listener = TcpListener::bind(&settings.http_addr)
            .await
            .with_context(|| format!("binding {}", settings.http_addr))?;
        Ok(Self {
            listener,
            router: http::router(service),
            db,
        })
    }

    /// The port the listener is bound to (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until SIGTERM or ctrl-c.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish (each releases its lock and caches its reply) and closes the pool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = ?self.listener.local_addr().ok(), "wallet service listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        tracing::info!("in-flight requests done; closing the database pool");
        self.db.close().await;
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
