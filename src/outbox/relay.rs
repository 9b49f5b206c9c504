//! The outbox relay: publishes unsent outbox rows to the events topic and marks them
//! sent once the broker acknowledged them.
//!
//! Woken right after a commit and polling as well. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several instances can relay without publishing a row
//! twice in the normal case (a crash between the ack and the mark republishes a batch:
//! consumers dedupe by event id).
//!
//! One user's events (one Kafka key) reach the topic in the order they were written:
//! - Within a batch, every row is handed to the producer at once, in id order, and the
//!   producer keeps each key's records in that order on its partition: it is idempotent
//!   (the broker takes a producer's records of a partition only in sequence), its
//!   records never time out, and a failure that could leave a gap fails it for good
//!   ([`crate::kafka::relay_producer`]). So what the broker wrote of a key is a prefix
//!   of what it was handed. A key's rows are marked sent up to its first failure, and
//!   the next pass starts again from that one (a record the broker wrote without its
//!   ack reaching us comes again: consumers dedupe by event id). A key whose record the
//!   producer refused to queue (too large, say) queues none of its later rows and holds
//!   back no other key. A batch takes about one round trip, however many rows a key has.
//! - Without timeouts in the producer, the relay watches progress itself
//!   ([`Relay::acknowledged`]): while it waits it keeps the backlog gauges fresh, and it
//!   replaces a producer that failed for good, or that has had no answer for three
//!   delivery timeouts while the broker answers; dropping the old one fails what it
//!   still held. A broker that is down is waited for: the batch leaves once it is back.
//! - Across relays, a relay publishes no row of a key while an earlier unsent row of
//!   that key is held by another relay ([`super::publishable`]): `SKIP LOCKED` hands
//!   relay B the later rows of a key whose earlier rows relay A is still publishing.
//!
//! Ids follow commit order within a key where order matters: a user's payments and
//! cancels append their events while holding the wallet's row lock. (A decline is
//! appended on its own; it concerns an order that moved no money.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use sqlx::MySqlPool;
use tokio::sync::Notify;

use super::{backlog, claim, mark_sent, publishable, OutboxRow};
use crate::configuration::KafkaSettings;
use crate::domain::events::{HEADER_EVENT_ID, HEADER_EVENT_TYPE};
use crate::kafka::wakeups::Wakeups;
use crate::kafka::WalletProducer;
use crate::support::tasks::StopSignal;
use crate::telemetry::metrics;

/// The relay worker.
pub struct Relay {
    pub db: MySqlPool,
    /// Replaced when it fails for good (see [`Relay::heal`]).
    pub producer: WalletProducer,
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
    /// Told when events were published, to wake the consumers that stopped fetching.
    pub published: Option<Arc<Wakeups>>,
}

/// Since when the relay fails, and when it last replaced its producer.
#[derive(Default)]
struct Healing {
    failing_since: Option<tokio::time::Instant>,
    rebuilt_at: Option<tokio::time::Instant>,
}

/// How often the backlog gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// What one pass of the relay did.
#[derive(Default)]
struct Pass {
    /// Rows marked sent.
    sent: usize,
    /// Some claimed rows wait behind earlier rows of their key that another relay holds.
    held_back: bool,
}

/// How soon a relay looks again after rows were held back behind another relay's.
const HELD_BACK_PAUSE: Duration = Duration::from_millis(5);

/// How long a stopping relay still waits for the batch in hand.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a growing backlog is logged while the broker is failing.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Relay {
    /// Relays until shutdown; the batch in hand is finished first, unless the broker
    /// leaves it unanswered for [`STOP_GRACE`] (then it is published again later).
    pub async fn run(mut self, stop: StopSignal) {
        tracing::info!(topic = %self.topic, "outbox relay started");
        let mut failures = 0u32;
        let mut healing = Healing::default();
        let mut last_lag_log = tokio::time::Instant::now();
        let mut last_gauge = None::<tokio::time::Instant>;
        loop {
            // After a batch that published, look again at once: rows may be waiting that
            // this relay's wake-ups do not announce (another instance's, held back
            // behind ours until now).
            let mut held_back = false;
            let published = match self.relay_batch(&mut healing, &stop).await {
                Ok(pass) => {
                    failures = 0;
                    healing.failing_since = None;
                    metrics::outbox_relay_succeeded();
                    held_back = pass.held_back;
                    pass.sent > 0
                }
                Err(e) => {
                    failures += 1;
                    self.heal(&mut healing).await;
                    if failures == 1 || last_lag_log.elapsed() >= LAG_LOG_INTERVAL {
                        last_lag_log = tokio::time::Instant::now();
                        let lag = backlog(&self.db, self.stall_after).await.ok();
                        tracing::warn!(error = %format!("{e:#}"), backlog = ?lag, "outbox relay cannot publish");
                    }
                    false
                }
            };
            // The backlog gauges take a COUNT query: at most once a second, not once per
            // wake-up (which, under load, is once per commit).
            if last_gauge.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                last_gauge = Some(tokio::time::Instant::now());
                self.refresh_gauges().await;
            }
            if stop.is_cancelled() {
                break;
            }
            if published {
                continue;
            }
            let pause = if held_back {
                // Another relay is publishing earlier events of a key we claimed rows
                // of: it is done within milliseconds, and nothing will wake us for it.
                HELD_BACK_PAUSE
            } else if failures > 0 {
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
    /// same producer, which delivers what it holds once the broker is back. At most once
    /// per [`Relay::rebuild_after`]; the topics are created again first, if this process
    /// creates them, since a broker that lost its storage lost them too.
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
        if crate::kafka::replace_producer(&mut self.producer, || {
            crate::kafka::relay_producer(&self.kafka)
        }) {
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

    /// How long the relay fails or waits without publishing before it replaces its
    /// producer: three delivery timeouts, so records that are only slow are not cut short.
    fn rebuild_after(&self) -> Duration {
        self.delivery_timeout.saturating_mul(3)
    }

    async fn refresh_gauges(&self) {
        if let Ok(lag) = backlog(&self.db, self.stall_after).await {
            metrics::outbox(
                lag.pending,
                lag.oldest_pending_ms,
                lag.last_published_ms,
                lag.status == super::OutboxStatus::Stalled,
            );
        }
    }

    /// Publishes one batch; returns how many rows were marked sent.
    async fn relay_batch(
        &mut self,
        healing: &mut Healing,
        stop: &StopSignal,
    ) -> anyhow::Result<Pass> {
        let mut tx = self
            .db
            .begin()
            .await
            .context("starting the relay transaction")?;
        let claimed = claim(&mut tx, self.batch)
            .await
            .context("claiming outbox rows")?;
        let count = claimed.len();
        let rows = publishable(&mut tx, claimed)
            .await
            .context("checking for earlier rows held by another relay")?;
        let held_back = rows.len() < count;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Pass { sent: 0, held_back });
        }
        // Every row to the producer now, in id order; a key stops at its first refusal.
        let mut refused: HashSet<&str> = HashSet::new();
        let mut first_error = None;
        let mut queued = Vec::with_capacity(rows.len());
        for row in &rows {
            if refused.contains(row.aggregate_id.as_str()) {
                continue;
            }
            match self.producer.send_result(self.record(row)) {
                Ok(delivery) => queued.push((row, delivery)),
                Err((e, _)) => {
                    refused.insert(&row.aggregate_id);
                    first_error.get_or_insert_with(|| failed(row, e));
                }
            }
        }
        let (rows, deliveries): (Vec<&OutboxRow>, Vec<DeliveryFuture>) = queued.into_iter().unzip();
        let Some(outcomes) = self.acknowledged(deliveries, healing, stop).await else {
            // Stopping: nothing is marked; what the broker took comes again later.
            tx.rollback().await?;
            return Ok(Pass::default());
        };
        // A key's queued rows all come before its refusal, if it had one: they count up
        // to the key's first failed delivery.
        let mut failing: HashSet<&str> = HashSet::new();
        let mut sent = Vec::with_capacity(rows.len());
        for (row, outcome) in rows.into_iter().zip(outcomes) {
            if failing.contains(row.aggregate_id.as_str()) {
                continue;
            }
            match outcome {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    failing.insert(&row.aggregate_id);
                    first_error.get_or_insert_with(|| failed(row, e));
                }
            }
        }
        mark_sent(&mut tx, &sent, crate::support::clock::now())
            .await
            .context("marking outbox rows sent")?;
        tx.commit()
            .await
            .context("committing the relay transaction")?;
        metrics::outbox_published(sent.len());
        if let (false, Some(wakeups)) = (sent.is_empty(), &self.published) {
            wakeups.written(&self.topic);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Pass {
                sent: sent.len(),
                held_back,
            }),
        }
    }

    /// Waits for the broker's answer to every delivery, however long it takes (the
    /// relay's records never time out). Meanwhile, once a second, it refreshes the
    /// backlog gauges and, once the wait is longer than the delivery timeout, heals
    /// ([`Relay::heal`]): a replaced producer fails the deliveries it still held, which
    /// ends the wait. None when the relay is stopping.
    async fn acknowledged(
        &mut self,
        deliveries: Vec<DeliveryFuture>,
        healing: &mut Healing,
        stop: &StopSignal,
    ) -> Option<Vec<Result<(), KafkaError>>> {
        let started = tokio::time::Instant::now();
        let mut all = std::pin::pin!(join_all(deliveries));
        let mut tick = tokio::time::interval_at(started + GAUGE_INTERVAL, GAUGE_INTERVAL);
        loop {
            tokio::select! {
                outcomes = &mut all => return Some(delivered(outcomes)),
                // A healthy broker answers within milliseconds: finish the batch rather
                // than have the next relay publish it again.
                _ = stop.cancelled() => {
                    return tokio::time::timeout(STOP_GRACE, &mut all).await.ok().map(delivered);
                }
                _ = tick.tick() => {
                    self.refresh_gauges().await;
                    if started.elapsed() >= self.delivery_timeout {
                        healing.failing_since.get_or_insert(started);
                        self.heal(healing).await;
                    }
                }
            }
        }
    }

    fn record<'a>(&'a self, row: &'a OutboxRow) -> FutureRecord<'a, [u8], [u8]> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_EVENT_ID,
                value: Some(row.event_id.as_bytes()),
            })
            .insert(Header {
                key: HEADER_EVENT_TYPE,
                value: Some(row.event_type.as_bytes()),
            });
        FutureRecord::to(&self.topic)
            .key(row.aggregate_id.as_bytes())
            .payload(row.payload.as_bytes())
            .headers(headers)
    }
}

/// The deliveries' outcomes (`E`: the producer was dropped before it answered).
fn delivered<E>(outcomes: Vec<Result<OwnedDeliveryResult, E>>) -> Vec<Result<(), KafkaError>> {
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::Canceled),
        })
        .collect()
}

fn failed(row: &OutboxRow, e: KafkaError) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("publishing outbox event {}", row.event_id))
}
