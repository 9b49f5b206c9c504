//! The points consumer: credits points for completed payments and takes them back for
//! cancelled ones, exactly once in effect.
//!
//! The event id goes into `processed_events` in the same transaction as the points
//! change, so a redelivered event (a crash before the offset commit, a relay that
//! published a batch twice, an operator's retry) changes nothing. The event id alone is
//! the key, not the consumer group: a group renamed, or a second group run by mistake,
//! reads the topic from its beginning and finds every event already applied.

use anyhow::Context;
use rdkafka::message::OwnedMessage;
use sqlx::MySqlPool;

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
        let delta = match event.event_type.as_str() {
            PAYMENT_COMPLETED => event.points,
            PAYMENT_CANCELLED => -event.points,
            // Refused requests move no money and earn nothing.
            PAYMENT_DECLINED | PAYMENT_REQUEST_REJECTED => return Ok(()),
            other => {
                return Err(HandlerError::Poison(format!(
                    "unknown event type {other:?}"
                )))
            }
        };
        self.apply(&event, delta)
            .await
            .map_err(HandlerError::Transient)
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
}
