//! Prometheus metrics (`GET /metrics`): every name the service records, in one place.
//!
//! The recorder is global (the `metrics` facade); it is installed once per process, so
//! several applications in one process (the tests) share it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds: sub-millisecond Redis calls to multi-second lock waits.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Sizes of group-committed batches, in commands or wallets.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
];

/// Installs the recorder (once) and returns the handle that renders the scrape; the
/// application runs [`upkeep`] beside it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("buckets are not empty")
                .set_buckets_for_metric(Matcher::Prefix("wallet_batch_".into()), BATCH_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            describe();
            handle
        })
        .clone()
}

/// Drains the histograms' buckets now and then, so a scrape stays cheap; runs until
/// the application stops.
pub async fn upkeep(handle: PrometheusHandle) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.run_upkeep();
    }
}

fn describe() {
    describe_counter!(
        "http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route, method and status"
    );
    describe_gauge!(
        "http_connections_open",
        "HTTP connections open now (at most WALLET_HTTP_MAX_CONNECTIONS)"
    );
    describe_counter!(
        "http_connections_closed_total",
        "HTTP connections the server closed, by reason: header_timeout, idle_timeout, evicted (the idlest, at the cap)"
    );
    describe_counter!(
        "http_connections_refused_total",
        "Connections closed at once because the cap was reached and every open one was serving a request"
    );
    describe_counter!(
        "wallet_lock_acquisitions_total",
        "Wallet lock acquisitions by outcome (acquired; busy: held by another process; timeout: a request gave up waiting)"
    );
    describe_histogram!(
        "wallet_lock_wait_seconds",
        Unit::Seconds,
        "Time waited for a wallet lock"
    );
    describe_gauge!(
        "wallet_lock_mode",
        "1 for the lock mode in use (redis or mysql-fallback), 0 for the other"
    );
    describe_gauge!(
        "wallet_redis_breaker_open",
        "1 while the Redis circuit breaker is open"
    );
    describe_counter!(
        "wallet_lock_stale_fence_total",
        "Transactions refused because a newer fencing token had written the wallet"
    );
    describe_counter!(
        "wallet_lock_lease_lost_total",
        "Transactions rolled back because the lock lease could not be renewed"
    );
    describe_counter!(
        "wallet_holds_expired_total",
        "Holds released by the expiry sweeper at their deadline"
    );
    describe_counter!(
        "wallet_mysql_fallback_total",
        "Money movements run on the MySQL fallback path"
    );
    describe_counter!(
        "wallet_idempotent_replays_total",
        "Requests answered with an earlier reply, by scope"
    );
    describe_counter!(
        "wallet_requests_in_progress_total",
        "Requests refused with 409 because the same key was in progress"
    );
    describe_counter!(
        "wallet_idempotency_key_reused_total",
        "Requests refused with 422 because the key was used for another request"
    );
    describe_histogram!(
        "wallet_batch_commands",
        "Debits and top-ups applied together in one group-committed transaction"
    );
    describe_histogram!(
        "wallet_batch_wallets",
        "Wallets locked together in one group-committed transaction"
    );
    describe_histogram!(
        "wallet_db_transaction_seconds",
        Unit::Seconds,
        "Duration of wallet transactions, by scope"
    );
    describe_gauge!(
        "wallet_outbox_backlog",
        "Outbox events not yet acknowledged by the broker"
    );
    describe_gauge!(
        "wallet_outbox_lag_seconds",
        Unit::Seconds,
        "Age of the oldest unpublished outbox event"
    );
    describe_counter!("wallet_outbox_published_total", "Outbox events published");
    describe_gauge!(
        "wallet_outbox_stalled",
        "1 while events wait longer than WALLET_OUTBOX_STALL_AFTER_MS and none was published for as long"
    );
    describe_gauge!(
        "wallet_outbox_last_publish_age_seconds",
        Unit::Seconds,
        "Time since the broker last acknowledged an outbox event (any relay's)"
    );
    describe_counter!(
        "wallet_outbox_producer_replacements_total",
        "Kafka producers the relay replaced because they failed for good or made no progress"
    );
    describe_counter!(
        "wallet_dead_letter_producer_replacements_total",
        "Kafka producers the dead-letter publishers replaced because they failed for good"
    );
    describe_gauge!(
        "wallet_outbox_relay_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of this relay's last pass without a broker error"
    );
    describe_counter!(
        "wallet_consumer_records_total",
        "Records handled by a consumer, by outcome (applied, dead_lettered)"
    );
    describe_counter!(
        "wallet_consumer_retries_total",
        "Record retries by consumer"
    );
    describe_gauge!(
        "wallet_consumer_lag",
        "Records behind the end of the partition, by consumer and partition"
    );
    describe_gauge!(
        "wallet_consumer_partitions",
        "Partitions assigned to a consumer by its group's last rebalance"
    );
    describe_gauge!(
        "wallet_consumer_fetching",
        "1 while a consumer fetches, 0 while it is idle and paused (it looks now and then, and wakes when records are written)"
    );
}

/// The route template a response answered, for the metrics: set by [`label_route`]
/// inside the router, read by [`track_http`] outside every other layer.
#[derive(Clone)]
struct RouteLabel(String);

/// Middleware, innermost: hands the matched route template (`unmatched` for a 404)
/// out with the response.
pub async fn label_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(RouteLabel(route));
    response
}

/// Middleware, outermost: counts and times every request by its route template, so
/// the answers of the outer layers (load shedding, the backstop) count too; those never
/// reached a route and are labelled `unrouted`.
pub async fn track_http(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let started = Instant::now();
    let mut response = next.run(request).await;
    let route = response
        .extensions_mut()
        .remove::<RouteLabel>()
        .map_or_else(|| "unrouted".to_owned(), |label| label.0);
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    counter!("http_requests_total", &labels).increment(1);
    histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

pub fn lock_acquired(outcome: &'static str, waited: Duration) {
    counter!("wallet_lock_acquisitions_total", "outcome" => outcome).increment(1);
    histogram!("wallet_lock_wait_seconds").record(waited.as_secs_f64());
}

/// HTTP connections open now.
pub fn connections_open(open: usize) {
    gauge!("http_connections_open").set(open as f64);
}

/// The server closed a connection: `header_timeout`, `idle_timeout` or `evicted`.
pub fn connection_closed(reason: &'static str) {
    counter!("http_connections_closed_total", "reason" => reason).increment(1);
}

/// A new connection was closed at once: at the cap, every open one was busy.
pub fn connection_refused() {
    counter!("http_connections_refused_total").increment(1);
}

/// A queued request gave up waiting for its wallet (503 `lock_timeout`).
pub fn lock_timed_out() {
    counter!("wallet_lock_acquisitions_total", "outcome" => "timeout").increment(1);
}

pub fn lock_mode(mode: &'static str) {
    let redis = mode == "redis";
    gauge!("wallet_lock_mode", "mode" => "redis").set(if redis { 1.0 } else { 0.0 });
    gauge!("wallet_lock_mode", "mode" => "mysql-fallback").set(if redis { 0.0 } else { 1.0 });
    gauge!("wallet_redis_breaker_open").set(if redis { 0.0 } else { 1.0 });
}

pub fn stale_fence() {
    counter!("wallet_lock_stale_fence_total").increment(1);
}

pub fn lease_lost() {
    counter!("wallet_lock_lease_lost_total").increment(1);
}

pub fn holds_expired(count: usize) {
    counter!("wallet_holds_expired_total").increment(count as u64);
}

pub fn mysql_fallback() {
    counter!("wallet_mysql_fallback_total").increment(1);
}

pub fn replayed(scope: &'static str) {
    counter!("wallet_idempotent_replays_total", "scope" => scope).increment(1);
}

pub fn in_progress(scope: &'static str) {
    counter!("wallet_requests_in_progress_total", "scope" => scope).increment(1);
}

pub fn key_reused(scope: &'static str) {
    counter!("wallet_idempotency_key_reused_total", "scope" => scope).increment(1);
}

/// One group-committed transaction: how many commands and wallets it carried.
pub fn batch(commands: usize, wallets: usize) {
    histogram!("wallet_batch_commands").record(commands as f64);
    histogram!("wallet_batch_wallets").record(wallets as f64);
}

pub fn transaction(scope: &'static str, took: Duration) {
    histogram!("wallet_db_transaction_seconds", "scope" => scope).record(took.as_secs_f64());
}

pub fn outbox(pending: i64, oldest_pending_ms: i64, last_published_ms: Option<i64>, stalled: bool) {
    gauge!("wallet_outbox_backlog").set(pending as f64);
    gauge!("wallet_outbox_lag_seconds").set(oldest_pending_ms as f64 / 1000.0);
    gauge!("wallet_outbox_stalled").set(if stalled { 1.0 } else { 0.0 });
    if let Some(ms) = last_published_ms {
        gauge!("wallet_outbox_last_publish_age_seconds").set(ms as f64 / 1000.0);
    }
}

/// A dead-letter publisher replaced its fatally failed Kafka producer.
pub fn dead_letter_producer_replaced() {
    counter!("wallet_dead_letter_producer_replacements_total").increment(1);
}

/// The relay replaced its Kafka producer (fatally failed, or stuck).
pub fn outbox_producer_replaced() {
    counter!("wallet_outbox_producer_replacements_total").increment(1);
}

/// A relay pass that ended without a broker error (it published, or had nothing to).
pub fn outbox_relay_succeeded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!("wallet_outbox_relay_last_success_timestamp_seconds").set(now.as_secs_f64());
}

pub fn outbox_published(count: usize) {
    counter!("wallet_outbox_published_total").increment(count as u64);
}

pub fn consumer_record(consumer: &'static str, outcome: &'static str) {
    counter!("wallet_consumer_records_total", "consumer" => consumer, "outcome" => outcome)
        .increment(1);
}

pub fn consumer_retry(consumer: &'static str) {
    counter!("wallet_consumer_retries_total", "consumer" => consumer).increment(1);
}

pub fn consumer_partitions(consumer: &'static str, partitions: usize) {
    gauge!("wallet_consumer_partitions", "consumer" => consumer).set(partitions as f64);
}

pub fn consumer_fetching(consumer: &'static str, fetching: bool) {
    gauge!("wallet_consumer_fetching", "consumer" => consumer).set(if fetching {
        1.0
    } else {
        0.0
    });
}

pub fn consumer_lag(consumer: &'static str, partition: i32, lag: i64) {
    gauge!("wallet_consumer_lag", "consumer" => consumer, "partition" => partition.to_string())
        .set(lag.max(0) as f64);
}
