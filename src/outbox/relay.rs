//! The outbox relay: publishes unsent outbox rows to the events topic and marks them
//! sent once the broker acknowledged them.
//!
//! Woken right after a commit and polling as well. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several instances can relay without publishing a row
//! twice in the normal case (a crash between the ack and the mark republishes a batch:
//! consumers dedupe by event id).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::MySqlPool;
use tokio::sync::Notify;

use super::{backlog, claim, mark_sent, OutboxRow};
use crate::events::{HEADER_EVENT_ID, HEADER_EVENT_TYPE};
use crate::shutdown::Shutdown;
use crate::telemetry::metrics;

/// The relay worker.
pub struct Relay {
    pub db: MySqlPool,
    pub producer: FutureProducer,
    pub topic: String,
    pub batch: u32,
    pub poll: Duration,
    pub delivery_timeout: Duration,
    /// Notified after every commit that wrote an event.
    pub wake: Arc<Notify>,
}

/// How often the backlog gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a growing backlog is logged while the broker is failing.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Relay {
    /// Relays until shutdown; the batch in hand is finished first.
    pub async fn run(self, mut shutdown: Shutdown) {
        tracing::info!(topic = %self.topic, "outbox relay started");
        let mut failures = 0u32;
        let mut last_lag_log = tokio::time::Instant::now();
        let mut last_gauge = None::<tokio::time::Instant>;
        loop {
            match self.relay_batch().await {
                // A full batch: there may be more right away.
                Ok(sent) if sent == self.batch as usize => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || last_lag_log.elapsed() >= LAG_LOG_INTERVAL {
                        last_lag_log = tokio::time::Instant::now();
                        let lag = backlog(&self.db).await.ok();
                        tracing::warn!(error = %format!("{e:#}"), backlog = ?lag, "outbox relay cannot publish");
                    }
                }
            }
            // The backlog gauges take a COUNT query: at most once a second, not once per
            // wake-up (which, under load, is once per commit).
            if last_gauge.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                last_gauge = Some(tokio::time::Instant::now());
                if let Ok(lag) = backlog(&self.db).await {
                    metrics::outbox(lag.pending, lag.oldest_pending_ms);
                }
            }
            if shutdown.is_shutdown() {
                break;
            }
            let pause = if failures > 0 {
                crate::kafka::backoff(failures, Duration::from_millis(200), Duration::from_secs(5))
            } else {
                self.poll
            };
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one batch; returns how many rows were marked sent.
    async fn relay_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self
            .db
            .begin()
            .await
            .context("starting the relay transaction")?;
        let rows = claim(&mut tx, self.batch)
            .await
            .context("claiming outbox rows")?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let deliveries = join_all(rows.iter().map(|row| self.publish(row))).await;
        let mut sent = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, delivery) in rows.iter().zip(deliveries) {
            match delivery {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        mark_sent(&mut tx, &sent, crate::wallet::views::now())
            .await
            .context("marking outbox rows sent")?;
        tx.commit()
            .await
            .context("committing the relay transaction")?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(sent.len()),
        }
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
