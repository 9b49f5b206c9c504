//! The points consumer: credits points for completed payments and takes them back for
//! cancelled ones, exactly once in effect.
//!
//! The event id goes into `processed_events` in the same transaction as the points
//! change, so a redelivered event (a crash before the offset commit, a relay that
//! published a batch twice, an operator's retry) changes nothing. The event id alone is
//! the key, not the consumer group: a group renamed, or a second group run by mistake,
//! reads the topic from its beginning and finds every event already applied.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use rdkafka::message::OwnedMessage;
use sqlx::{MySqlPool, QueryBuilder};

use crate::events::{
    PaymentEvent, PAYMENT_CANCELLED, PAYMENT_COMPLETED, PAYMENT_DECLINED, PAYMENT_REQUEST_REJECTED,
};
use crate::kafka::worker::{decode_json, HandlerError, RecordHandler};
use crate::wallet::views::now;

/// Applies payment events to `wallet_points`.
pub struct PointsHandler {
    pub db: MySqlPool,
    /// The consumer group, recorded with each event it applied (for the record only:
    /// an event applied under any group is never applied again).
    pub consumer: String,
}

impl RecordHandler for PointsHandler {
    async fn handle(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let event: PaymentEvent = decode_json(record, "a payment event")?;
        let Some(delta) = points_delta(&event)? else {
            return Ok(());
        };
        self.apply(&event, delta)
            .await
            .map_err(HandlerError::Transient)
    }

    async fn handle_batch(&self, records: &[OwnedMessage]) -> Option<anyhow::Result<()>> {
        Some(self.apply_batch(records).await)
    }
}

/// What one event does to its wallet's points; `None` for events that earn nothing.
fn points_delta(event: &PaymentEvent) -> Result<Option<i64>, HandlerError> {
    match event.event_type.as_str() {
        PAYMENT_COMPLETED => Ok(Some(event.points)),
        PAYMENT_CANCELLED => Ok(Some(-event.points)),
        // Refused requests move no money and earn nothing.
        PAYMENT_DECLINED | PAYMENT_REQUEST_REJECTED => Ok(None),
        other => Err(HandlerError::Poison(format!(
            "unknown event type {other:?}"
        ))),
    }
}

impl PointsHandler {
    async fn apply(&self, event: &PaymentEvent, delta: i64) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await?;
        let first_time = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES (?, ?, ?)",
        )
        .bind(&self.consumer)
        .bind(&event.event_id)
        .bind(now())
        .execute(&mut *tx)
        .await;
        match first_time {
            Ok(_) => {}
            Err(e) if crate::store::is_unique_violation(&e) => {
                tracing::debug!(event_id = %event.event_id, "event already applied");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let wallet: Option<crate::store::ExactText> =
            sqlx::query_scalar("SELECT user_id FROM wallets WHERE user_id = ?")
                .bind(&event.user_id)
                .fetch_optional(&mut *tx)
                .await?;
        wallet.with_context(|| format!("wallet {} not found", event.user_id))?;
        sqlx::query(
            "INSERT INTO wallet_points (user_id, points, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE points = points + VALUES(points), updated_at = VALUES(updated_at)",
        )
        .bind(&event.user_id)
        .bind(delta)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::debug!(event_id = %event.event_id, user_id = %event.user_id, delta, "points applied");
        Ok(())
    }

    /// Applies many events in one transaction: the ones not applied before, each once,
    /// one points change per wallet. Any record this cannot apply (unreadable, unknown
    /// type, a wallet that does not exist) fails the whole batch, whose records are then
    /// handled one by one.
    async fn apply_batch(&self, records: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut changes: Vec<(PaymentEvent, i64)> = Vec::with_capacity(records.len());
        let mut seen = HashSet::new();
        for record in records {
            let event: PaymentEvent =
                decode_json(record, "a payment event").map_err(|e| anyhow::anyhow!("{e}"))?;
            let delta = points_delta(&event).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(delta) = delta {
                if seen.insert(event.event_id.clone()) {
                    changes.push((event, delta));
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        let mut applied =
            QueryBuilder::new("SELECT event_id FROM processed_events WHERE event_id IN (");
        let mut ids = applied.separated(", ");
        for (event, _) in &changes {
            ids.push_bind(&event.event_id);
        }
        ids.push_unseparated(")");
        let applied: HashSet<String> = applied
            .build_query_scalar::<String>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        changes.retain(|(event, _)| !applied.contains(&event.event_id));
        if changes.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        let mut deltas: BTreeMap<&str, i64> = BTreeMap::new();
        for (event, delta) in &changes {
            *deltas.entry(event.user_id.as_str()).or_default() += delta;
        }
        let mut wallets = QueryBuilder::new("SELECT user_id FROM wallets WHERE user_id IN (");
        let mut users = wallets.separated(", ");
        for user_id in deltas.keys() {
            users.push_bind(*user_id);
        }
        users.push_unseparated(")");
        let found = wallets
            .build_query_scalar::<crate::store::ExactText>()
            .fetch_all(&mut *tx)
            .await?
            .len();
        anyhow::ensure!(
            found == deltas.len(),
            "{} of the batch's wallets were not found",
            deltas.len() - found
        );
        let at = now();
        let mut processed =
            QueryBuilder::new("INSERT INTO processed_events (consumer, event_id, processed_at) ");
        processed.push_values(&changes, |mut row, (event, _)| {
            row.push_bind(&self.consumer)
                .push_bind(&event.event_id)
                .push_bind(at);
        });
        processed.build().execute(&mut *tx).await?;
        // One row per wallet, in key order, so two batches lock them in the same order.
        let mut points =
            QueryBuilder::new("INSERT INTO wallet_points (user_id, points, updated_at) ");
        points.push_values(&deltas, |mut row, (user_id, delta)| {
            row.push_bind(*user_id).push_bind(*delta).push_bind(at);
        });
        points.push(
            " ON DUPLICATE KEY UPDATE points = points + VALUES(points), updated_at = VALUES(updated_at)",
        );
        points.build().execute(&mut *tx).await?;
        tx.commit().await?;
        tracing::debug!(
            events = changes.len(),
            wallets = deltas.len(),
            "points applied in a batch"
        );
        Ok(())
    }
}
