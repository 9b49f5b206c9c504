//! The outbox relay: publishes unsent outbox rows to the events topic and marks them
//! sent once the broker acknowledged them.
//!
//! Woken right after a commit and polling as well. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several instances can relay without publishing a row
//! twice in the normal case (a crash between the ack and the mark republishes a batch:
//! consumers dedupe by event id).
//!
//! One user's events (one Kafka key) reach the topic in the order they were written:
//! - Within a batch, a key's rows are sent one after the other, each once the broker
//!   acknowledged the one before, and the key stops at its first failure: its later
//!   rows are neither sent nor marked, and the next pass starts again from the failed
//!   one. Different keys go in parallel: a batch takes as many round trips as its
//!   busiest key has rows in it, not one per row. Sending a key's rows concurrently and
//!   trusting the idempotent producer's per-partition order is not enough: a record that
//!   times out (`message.timeout.ms`) leaves a gap that later records fill, and
//!   librdkafka's `enable.gapless.guarantee` does not cover timeouts.
//! - Across relays, a relay publishes no row of a key while an earlier unsent row of
//!   that key is held by another relay ([`super::publishable`]): `SKIP LOCKED` hands
//!   relay B the later rows of a key whose earlier rows relay A is still publishing.
//!
//! Ids follow commit order within a key where order matters: a user's payments and
//! cancels append their events while holding the wallet's row lock. (A decline is
//! appended on its own; it concerns an order that moved no money.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::MySqlPool;
use tokio::sync::Notify;

use super::{backlog, claim, mark_sent, publishable, OutboxRow};
use crate::configuration::KafkaSettings;
use crate::domain::events::{HEADER_EVENT_ID, HEADER_EVENT_TYPE};
use crate::support::tasks::StopSignal;
use crate::telemetry::metrics;

/// The relay worker.
pub struct Relay {
    pub db: MySqlPool,
    /// Replaced when it fails for good (see [`Relay::heal`]).
    pub producer: FutureProducer,
    /// To build a new producer, and the topics again, when the old one is replaced.
    pub kafka: KafkaSettings,
    pub topic: String,
    pub batch: u32,
    pub poll: Duration,
    pub delivery_timeout: Duration,
    /// See [`super::backlog`].
    pub stall_after: Duration,
    /// Notified after every commit that wrote an event.
    pub wake: Arc<Notify>,
}

/// Since when the relay fails, and when it last replaced its producer.
#[derive(Default)]
struct Healing {
    failing_since: Option<tokio::time::Instant>,
    rebuilt_at: Option<tokio::time::Instant>,
}

/// How often the backlog gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a growing backlog is logged while the broker is failing.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Relay {
    /// Relays until shutdown; the batch in hand is finished first.
    pub async fn run(mut self, stop: StopSignal) {
        tracing::info!(topic = %self.topic, "outbox relay started");
        let mut failures = 0u32;
        let mut healing = Healing::default();
        let mut last_lag_log = tokio::time::Instant::now();
        let mut last_gauge = None::<tokio::time::Instant>;
        loop {
            match self.relay_batch().await {
                // A full batch: there may be more right away.
                Ok(sent) if sent == self.batch as usize => {
                    failures = 0;
                    healing.failing_since = None;
                    metrics::outbox_relay_succeeded();
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    healing.failing_since = None;
                    metrics::outbox_relay_succeeded();
                }
                Err(e) => {
                    failures += 1;
                    self.heal(&mut healing).await;
                    if failures == 1 || last_lag_log.elapsed() >= LAG_LOG_INTERVAL {
                        last_lag_log = tokio::time::Instant::now();
                        let lag = backlog(&self.db, self.stall_after).await.ok();
                        tracing::warn!(error = %format!("{e:#}"), backlog = ?lag, "outbox relay cannot publish");
                    }
                }
            }
            // The backlog gauges take a COUNT query: at most once a second, not once per
            // wake-up (which, under load, is once per commit).
            if last_gauge.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                last_gauge = Some(tokio::time::Instant::now());
                if let Ok(lag) = backlog(&self.db, self.stall_after).await {
                    metrics::outbox(
                        lag.pending,
                        lag.oldest_pending_ms,
                        lag.last_published_ms,
                        lag.status == super::OutboxStatus::Stalled,
                    );
                }
            }
            if stop.is_cancelled() {
                break;
            }
            let pause = if failures > 0 {
                crate::support::backoff::backoff(
                    failures,
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                )
            } else {
                self.poll
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Replaces the producer when librdkafka reports it fatally failed (an idempotent
    /// producer in that state never recovers by itself), or when the relay has
    /// published nothing for [`Relay::rebuild_after`] while the broker answers metadata
    /// requests: then the broker is up and this producer is what is stuck (for instance
    /// it cannot get a producer id). A broker that is simply down is waited for with the
    /// same producer: a new one would only start from scratch, and a replacement made
    /// while Tansu was down was seen to crash its SQLite storage once it came back. At
    /// most once per [`Relay::rebuild_after`]; the topics are created again first, if
    /// this process creates them, since a broker that lost its storage lost them too.
    async fn heal(&mut self, healing: &mut Healing) {
        let now = tokio::time::Instant::now();
        let since = *healing.failing_since.get_or_insert(now);
        let fatal = self.producer.client().fatal_error();
        let stuck = now.duration_since(since) >= self.rebuild_after();
        let rested = healing
            .rebuilt_at
            .is_none_or(|at| now.duration_since(at) >= self.rebuild_after());
        if !rested || (fatal.is_none() && !(stuck && self.broker_answers().await)) {
            return;
        }
        healing.rebuilt_at = Some(now);
        if self.kafka.create_topics {
            if let Err(e) = crate::kafka::ensure_topics(&self.kafka).await {
                tracing::warn!(error = %format!("{e:#}"), "could not create the topics again");
            }
        }
        if crate::kafka::replace_producer(&mut self.producer, &self.kafka) {
            tracing::warn!(fatal = ?fatal, failing_for = ?now.duration_since(since), "replaced the outbox relay's Kafka producer");
            metrics::outbox_producer_replaced();
        }
    }

    /// Whether the broker answers a metadata request for the events topic (bounded).
    async fn broker_answers(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// How long the relay fails without publishing before it replaces its producer:
    /// three delivery timeouts, so records that are only slow are not cut short.
    fn rebuild_after(&self) -> Duration {
        self.delivery_timeout.saturating_mul(3)
    }

    /// Publishes one batch; returns how many rows were marked sent.
    async fn relay_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self
            .db
            .begin()
            .await
            .context("starting the relay transaction")?;
        let claimed = claim(&mut tx, self.batch)
            .await
            .context("claiming outbox rows")?;
        let rows = publishable(&mut tx, claimed)
            .await
            .context("checking for earlier rows held by another relay")?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut keys: HashMap<&str, Vec<&OutboxRow>> = HashMap::new();
        for row in &rows {
            keys.entry(&row.aggregate_id).or_default().push(row);
        }
        let deliveries = join_all(keys.into_values().map(|rows| self.publish_in_order(rows))).await;
        let mut sent = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (ids, error) in deliveries {
            sent.extend(ids);
            if let Some(e) = error {
                first_error.get_or_insert(e);
            }
        }
        mark_sent(&mut tx, &sent, crate::support::clock::now())
            .await
            .context("marking outbox rows sent")?;
        tx.commit()
            .await
            .context("committing the relay transaction")?;
        metrics::outbox_published(sent.len());
        match first_error {
            Some(e) => Err(e),
            None => Ok(sent.len()),
        }
    }

    /// Publishes one key's rows, oldest first, each once the broker acknowledged the one
    /// before, up to the first failure. Returns the ids the broker acknowledged and the
    /// failure, if any.
    async fn publish_in_order(&self, rows: Vec<&OutboxRow>) -> (Vec<u64>, Option<anyhow::Error>) {
        let mut sent = Vec::with_capacity(rows.len());
        for row in rows {
            if let Err(e) = self.publish(row).await {
                return (sent, Some(e));
            }
            sent.push(row.id);
        }
        (sent, None)
    }

    async fn publish(&self, row: &OutboxRow) -> anyhow::Result<()> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_EVENT_ID,
                value: Some(row.event_id.as_bytes()),
            })
            .insert(Header {
                key: HEADER_EVENT_TYPE,
                value: Some(row.event_type.as_bytes()),
            });
        let record = FutureRecord::to(&self.topic)
            .key(row.aggregate_id.as_bytes())
            .payload(row.payload.as_bytes())
            .headers(headers);
        self.producer
            .send(record, self.delivery_timeout)
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("publishing outbox event {}", row.event_id))?;
        Ok(())
    }
}
