//! The points consumer: credits points for completed payments and captured holds and
//! takes them back for refunds and cancels, exactly once in effect.
//!
//! The event id goes into `processed_events` in the same transaction as the points
//! change, so a redelivered event (a crash before the offset commit, a relay that
//! published a batch twice, an operator's retry) changes nothing. The event id alone is
//! the key, not the consumer group: a group renamed, or a second group run by mistake,
//! reads the topic from its beginning and finds every event already applied.

use std::collections::{BTreeMap, HashSet};

use rdkafka::message::OwnedMessage;
use sqlx::{MySqlPool, QueryBuilder};

use crate::consumers::{decode_json, HandlerError, RecordHandler};
use crate::domain::events::{
    HOLD_CAPTURED, HOLD_CREATED, HOLD_DECLINED, HOLD_EXPIRED, HOLD_REQUEST_REJECTED, HOLD_VOIDED,
    PAYMENT_CANCELLED, PAYMENT_COMPLETED, PAYMENT_DECLINED, PAYMENT_REFUNDED,
    PAYMENT_REFUND_DECLINED, PAYMENT_REFUND_REJECTED, PAYMENT_REQUEST_REJECTED,
};
use crate::support::clock::now;

/// What the points consumer reads of any event on the topic (payment or hold).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PointsEvent {
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    user_id: String,
    #[serde(default)]
    points: i64,
}

/// Applies payment events to `wallet_points`.
pub struct PointsHandler {
    pub db: MySqlPool,
    /// The consumer group, recorded with each event it applied (for the record only:
    /// an event applied under any group is never applied again).
    pub consumer: String,
}

impl RecordHandler for PointsHandler {
    async fn handle(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let event: PointsEvent = decode_json(record, "a wallet event")?;
        let Some(delta) = points_delta(&event)? else {
            return Ok(());
        };
        self.apply(&[(event, delta)])
            .await
            .map_err(HandlerError::Transient)
    }

    async fn handle_batch(&self, records: &[OwnedMessage]) -> Option<anyhow::Result<()>> {
        Some(self.apply_batch(records).await)
    }
}

/// What one event does to its wallet's points; `None` for events that earn nothing.
fn points_delta(event: &PointsEvent) -> Result<Option<i64>, HandlerError> {
    match event.event_type.as_str() {
        PAYMENT_COMPLETED | HOLD_CAPTURED => Ok(Some(event.points)),
        PAYMENT_REFUNDED | PAYMENT_CANCELLED => Ok(Some(-event.points)),
        // Refused requests move no money and earn nothing; a hold earns only when it is
        // captured.
        PAYMENT_DECLINED
        | PAYMENT_REQUEST_REJECTED
        | PAYMENT_REFUND_DECLINED
        | PAYMENT_REFUND_REJECTED
        | HOLD_CREATED
        | HOLD_VOIDED
        | HOLD_EXPIRED
        | HOLD_DECLINED
        | HOLD_REQUEST_REJECTED => Ok(None),
        other => Err(HandlerError::Poison(format!(
            "unknown event type {other:?}"
        ))),
    }
}

impl PointsHandler {
    /// Applies `changes` (events with their points) in one transaction: the events not
    /// applied before, each once, one points change per wallet in key order. A wallet
    /// that does not exist fails the whole call, which applies nothing.
    async fn apply(&self, changes: &[(PointsEvent, i64)]) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await?;
        let mut applied =
            QueryBuilder::new("SELECT event_id FROM processed_events WHERE event_id IN (");
        let mut ids = applied.separated(", ");
        for (event, _) in changes {
            ids.push_bind(&event.event_id);
        }
        ids.push_unseparated(")");
        let applied: HashSet<String> = applied
            .build_query_scalar::<String>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let fresh: Vec<&(PointsEvent, i64)> = changes
            .iter()
            .filter(|(event, _)| !applied.contains(&event.event_id))
            .collect();
        if fresh.is_empty() {
            tracing::debug!(events = changes.len(), "events already applied");
            tx.rollback().await?;
            return Ok(());
        }
        let mut deltas: BTreeMap<&str, i64> = BTreeMap::new();
        for (event, delta) in &fresh {
            *deltas.entry(event.user_id.as_str()).or_default() += delta;
        }
        let mut wallets = QueryBuilder::new("SELECT user_id FROM wallets WHERE user_id IN (");
        let mut users = wallets.separated(", ");
        for user_id in deltas.keys() {
            users.push_bind(*user_id);
        }
        users.push_unseparated(")");
        let found: HashSet<String> = wallets
            .build_query_scalar::<crate::store::ExactText>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(String::from)
            .collect();
        let missing: Vec<&str> = deltas
            .keys()
            .copied()
            .filter(|user_id| !found.contains(*user_id))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "wallet {} not found",
            missing.join(", ")
        );
        let at = now();
        let mut processed =
            QueryBuilder::new("INSERT INTO processed_events (consumer, event_id, processed_at) ");
        processed.push_values(&fresh, |mut row, (event, _)| {
            row.push_bind(&self.consumer)
                .push_bind(&event.event_id)
                .push_bind(at);
        });
        match processed.build().execute(&mut *tx).await {
            Ok(_) => {}
            // Applied by someone else since the read above. For one event that is the
            // whole answer; a batch fails, and its events are then applied one by one.
            Err(e) if crate::store::is_unique_violation(&e) && fresh.len() == 1 => {
                tracing::debug!(event_id = %fresh[0].0.event_id, "event already applied");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
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
            events = fresh.len(),
            wallets = deltas.len(),
            "points applied"
        );
        Ok(())
    }

    /// Applies many records in one transaction. Any record this cannot apply
    /// (unreadable, unknown type, a wallet that does not exist) fails the whole batch,
    /// whose records are then handled one by one.
    async fn apply_batch(&self, records: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut changes: Vec<(PointsEvent, i64)> = Vec::with_capacity(records.len());
        let mut seen = HashSet::new();
        for record in records {
            let event: PointsEvent =
                decode_json(record, "a wallet event").map_err(|e| anyhow::anyhow!("{e}"))?;
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
        self.apply(&changes).await
    }
}
