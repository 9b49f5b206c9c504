//! Builds the application from [`Settings`] and runs it until asked to stop. Every
//! background task is started here, through the application's [`Tasks`], so shutdown
//! stops them all at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::Producer;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::breaker::RedisBreaker;
use crate::configuration::{ConnectionSettings, KafkaSettings, Settings};
use crate::consumers::dead_letters::DeadLetterCollector;
use crate::consumers::payment_requests::PaymentRequestHandler;
use crate::consumers::points::PointsHandler;
use crate::consumers::{consume, RetryPolicy};
use crate::dead_letters::publish::DeadLetterPublisher;
use crate::dead_letters::store::DeadLetters;
use crate::idempotency::IdempotencyCache;
use crate::kafka::wakeups::{IdleFetch, Wakeups};
use crate::kafka::WalletProducer;
use crate::lock::WalletLock;
use crate::outbox::relay::Relay;
use crate::redis_support::{self, KeySpace, SharedRedis};
use crate::support::backoff::backoff;
use crate::support::tasks::{StopSignal, Tasks};
use crate::telemetry::metrics;
use crate::wallet::{WalletCore, WalletService};
use crate::{http, kafka, store};

/// A built, not yet running, service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    connections: ConnectionSettings,
    db: MySqlPool,
    producer: WalletProducer,
    tasks: Tasks,
    service: WalletService,
}

/// How long shutdown waits for the background tasks, all together: workers finish
/// their batch and commit, the batch dispatcher answers what is queued.
const TASK_DRAIN: Duration = Duration::from_secs(15);

impl Application {
    /// Connects to MySQL (applying migrations) and Redis, and binds the listener.
    ///
    /// Redis need not be up: the pool connects lazily and the breaker starts the
    /// service on the MySQL path if Redis does not answer.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        // Refuse to start without API keys before touching anything else.
        let gatekeeper = http::Gatekeeper::new(&settings.api)?;
        let tasks = Tasks::new();
        // Before anything records a metric.
        let metrics = metrics::install();
        tasks.spawn_until_stopped(metrics::upkeep(metrics.clone()));
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
        let (redis_pool, redis_nodes) = redis_support::connect(redis_settings)?;
        let keys = KeySpace::new(&redis_settings.key_prefix);
        let shared_redis = SharedRedis::new(redis_pool, redis_settings.command_timeout);
        let mut wakeups = Wakeups::new(shared_redis.clone(), keys.records_channel());
        let (lock, lock_upkeep) = WalletLock::new(
            redis_nodes.clone(),
            keys.clone(),
            settings.lock.clone(),
            redis_settings.command_timeout,
        );
        tasks.spawn_until_stopped(lock_upkeep.listen());
        let idempotency = IdempotencyCache::new(
            keys,
            settings.idempotency.reply_ttl,
            settings.idempotency.claim_ttl,
            redis_settings.command_timeout,
        );
        let breaker = RedisBreaker::new(
            settings.lock.mode,
            shared_redis.clone(),
            settings.lock.breaker_threshold,
            settings.lock.breaker_probe_interval,
            redis_settings.command_timeout,
        );
        tasks.spawn_until_stopped(breaker.clone().probe());
        let producer = kafka::producer(&settings.kafka)?;
        let outbox_wake = Arc::new(Notify::new());
        let (service, dispatcher) = WalletService::new(
            WalletCore {
                db: db.clone(),
                redis: shared_redis,
                lock,
                idempotency,
                breaker,
                currency: settings.currency,
                lock_wait: settings.lock.wait,
                request_timeout: settings.api.request_timeout,
                points_rate: settings.points_rate,
                outbox_wake: outbox_wake.clone(),
                lock_poll: settings.lock.poll_interval,
                outbox_stall_after: settings.kafka.outbox_stall_after,
                holds: settings.holds,
            },
            settings.lock.batch_max,
        );
        tasks.spawn(dispatcher);
        tasks.spawn(crate::wallet::sweep(
            service.clone(),
            settings.holds.sweep_interval,
            tasks.stop_signal(),
        ));
        let consumers = Consumers::register(&settings.kafka, &mut wakeups);
        let wakeups = Arc::new(wakeups);
        // A process without consumers only announces; it has nobody to wake.
        if wakeups.has_consumers() {
            tasks.spawn_until_stopped(kafka::wakeups::listen(
                Arc::downgrade(&wakeups),
                redis_nodes,
            ));
        }
        let dead_letters = DeadLetters::new(
            db.clone(),
            producer.clone(),
            settings.kafka.delivery_timeout,
        )
        .announcing(wakeups.clone());
        spawn_workers(
            &settings,
            &db,
            &producer,
            &service,
            outbox_wake,
            consumers,
            wakeups,
            &tasks,
        )?;

        let listener = TcpListener::bind(&settings.http_addr)
            .await
            .with_context(|| format!("binding {}", settings.http_addr))?;
        Ok(Self {
            listener,
            router: http::router(
                service.clone(),
                dead_letters,
                metrics,
                gatekeeper,
                &settings.api,
                tasks.clone(),
            ),
            connections: settings.connections.clone(),
            db,
            producer,
            service,
            tasks,
        })
    }

    /// The use cases, for tools and tests that call them without HTTP.
    pub fn service(&self) -> WalletService {
        self.service.clone()
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
    /// finish (each releases its lock and caches its reply), stops every background
    /// task at once (workers after their current batch, consumers committing what they
    /// applied), flushes the producer and closes the pool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // The router has its own handle; this one would keep the engine's queue open,
        // and its dispatcher ends only when every handle is gone.
        drop(self.service);
        let limits = &self.connections;
        tracing::info!(
            addr = ?self.listener.local_addr().ok(),
            open_files_limit = limits.open_files_limit,
            max_connections = limits.max_connections,
            header_timeout_ms = limits.header_timeout.as_millis() as u64,
            keep_alive_timeout_ms = limits.keep_alive_timeout.as_millis() as u64,
            "wallet service listening"
        );
        http::serve(self.listener, self.router, self.connections, shutdown).await;
        tracing::info!("in-flight requests done; stopping background tasks");
        let left = self.tasks.shutdown(TASK_DRAIN).await;
        if left > 0 {
            tracing::warn!(tasks = left, "background tasks did not stop in time");
        }
        let producer = self.producer;
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("the Kafka producer could not flush every record");
        }
        self.db.close().await;
        tracing::info!("stopped");
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

/// The wake-ups of the consumers this process runs ([`kafka::wakeups`]); `None` for
/// one it does not run.
struct Consumers {
    points: Option<Arc<Notify>>,
    requests: Option<Arc<Notify>>,
    dead_letters: Option<Arc<Notify>>,
}

impl Consumers {
    fn register(kafka: &KafkaSettings, wakeups: &mut Wakeups) -> Self {
        let events_dlt = KafkaSettings::dlt(&kafka.events_topic);
        let requests_dlt = KafkaSettings::dlt(&kafka.requests_topic);
        Self {
            points: kafka
                .points_consumer_enabled
                .then(|| wakeups.consumer(&[&kafka.events_topic])),
            requests: kafka
                .requests_consumer_enabled
                .then(|| wakeups.consumer(&[&kafka.requests_topic])),
            dead_letters: kafka
                .dlt_consumer_enabled
                .then(|| wakeups.consumer(&[&events_dlt, &requests_dlt])),
        }
    }
}

/// How a consumer woken by `wake` stops fetching while idle, per `kafka`; `None` when
/// idle consumers keep fetching (`WALLET_KAFKA_IDLE_AFTER_MS=0`).
fn idle_fetch(kafka: &KafkaSettings, wake: Option<Arc<Notify>>) -> Option<IdleFetch> {
    let wake = wake?;
    (!kafka.idle_after.is_zero()).then(|| IdleFetch {
        after: kafka.idle_after,
        look_every: kafka.idle_look,
        look_for: kafka.fetch_wait + LOOK_MARGIN,
        wake,
    })
}

/// What one look fetches for beyond `fetch.wait.max.ms`: the fetch's round trip.
const LOOK_MARGIN: Duration = Duration::from_millis(20);

/// Starts the background workers this process runs: topic creation, the outbox relay,
/// the points consumer, the payment-request consumer and the dead-letter collector.
#[allow(clippy::too_many_arguments)]
fn spawn_workers(
    settings: &Settings,
    db: &MySqlPool,
    producer: &WalletProducer,
    service: &WalletService,
    outbox_wake: Arc<Notify>,
    consumers: Consumers,
    wakeups: Arc<Wakeups>,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    let retry = RetryPolicy {
        attempts: kafka.retry_attempts.max(1),
        base: kafka.retry_base,
        cap: kafka.retry_cap,
        in_flight_wait: settings.idempotency.claim_ttl,
    };
    if kafka.create_topics {
        tasks.spawn(create_topics(kafka.clone(), tasks.stop_signal()));
    }
    if kafka.relay_enabled {
        let relay = Relay {
            db: db.clone(),
            // A producer of its own, so that replacing a failed one touches nothing else.
            producer: kafka::relay_producer(kafka)?,
            kafka: kafka.clone(),
            topic: kafka.events_topic.clone(),
            batch: kafka.relay_batch.max(1),
            poll: kafka.relay_poll,
            delivery_timeout: kafka.delivery_timeout,
            stall_after: kafka.outbox_stall_after,
            wake: outbox_wake,
            published: Some(wakeups.clone()),
        };
        tasks.spawn(relay.run(tasks.stop_signal()));
    }
    let dead_letters = |group: &str| {
        DeadLetterPublisher::new(kafka, producer.clone(), group).announcing(wakeups.clone())
    };
    if kafka.points_consumer_enabled {
        let handler = PointsHandler {
            db: db.clone(),
            consumer: kafka.points_group.clone(),
        };
        tasks.spawn(consume(
            "points",
            kafka::consumer(
                kafka,
                "points",
                &kafka.points_group,
                &[&kafka.events_topic],
                kafka.fetch_wait,
            )?,
            handler,
            dead_letters(&kafka.points_group),
            retry.clone(),
            idle_fetch(kafka, consumers.points),
            tasks.stop_signal(),
        ));
    }
    if kafka.requests_consumer_enabled {
        let handler = PaymentRequestHandler {
            service: service.clone(),
        };
        tasks.spawn(consume(
            "payment-requests",
            kafka::consumer(
                kafka,
                "payment-requests",
                &kafka.requests_group,
                &[&kafka.requests_topic],
                kafka.fetch_wait,
            )?,
            handler,
            dead_letters(&kafka.requests_group),
            retry.clone(),
            idle_fetch(kafka, consumers.requests),
            tasks.stop_signal(),
        ));
    }
    if kafka.dlt_consumer_enabled {
        let events_dlt = KafkaSettings::dlt(&kafka.events_topic);
        let requests_dlt = KafkaSettings::dlt(&kafka.requests_topic);
        // Storing a dead letter only fails while MySQL does: keep trying, never dead-letter it again.
        let patient = RetryPolicy {
            attempts: u32::MAX,
            ..retry
        };
        tasks.spawn(consume(
            "dead-letters",
            kafka::consumer(
                kafka,
                "dead-letters",
                &kafka.dlt_group,
                &[&events_dlt, &requests_dlt],
                kafka.fetch_wait,
            )?,
            DeadLetterCollector { db: db.clone() },
            dead_letters(&kafka.dlt_group),
            patient,
            idle_fetch(kafka, consumers.dead_letters),
            tasks.stop_signal(),
        ));
    }
    Ok(())
}

/// Creates the topics, retrying while the broker is unreachable (the service serves
/// meanwhile; the outbox holds the events).
async fn create_topics(settings: KafkaSettings, stop: StopSignal) {
    let mut attempt = 0;
    loop {
        // An admin call can take its whole timeout on a broker that is starting: shutdown
        // does not wait for it.
        let created = tokio::select! {
            _ = stop.cancelled() => return,
            created = kafka::ensure_topics(&settings) => created,
        };
        match created {
            Ok(()) => return,
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %format!("{e:#}"), attempt, "could not create Kafka topics; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff(attempt, Duration::from_millis(500), Duration::from_secs(10))) => {}
        }
    }
}
