//! `payments`: one row per order; the unique `order_id` is the durable idempotency record.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

crate::support::text_enum::text_enum! {
    /// How an order was charged.
    pub enum PaymentSource {
        /// A payment (`POST /payments`).
        Debit = "DEBIT",
        /// A captured hold: the capture wrote the payment.
        Capture = "CAPTURE",
    }
}

crate::support::text_enum::text_enum! {
    /// Where a payment stands.
    pub enum PaymentStatus {
        Completed = "COMPLETED",
        /// Refunded in full by refunds.
        Refunded = "REFUNDED",
        /// Cancelled: whatever remained was given back.
        Cancelled = "CANCELLED",
    }
}

/// A payment row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub payment_id: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub order_id: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: PaymentStatus,
    pub source: PaymentSource,
    pub balance_after: Decimal,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// The balance after the cancel.
    pub refund_balance_after: Option<Decimal>,
    /// What refunds and a cancel have given back, at most `amount`.
    pub refunded_amount: Decimal,
    /// Points this payment earned.
    pub points: i64,
    /// Points taken back by its refunds and cancel, at most `points`.
    pub points_refunded: i64,
}

impl PaymentRow {
    /// What may still be refunded.
    pub fn refundable(&self) -> Decimal {
        match self.status {
            PaymentStatus::Completed => self.amount - self.refunded_amount,
            PaymentStatus::Refunded | PaymentStatus::Cancelled => Decimal::ZERO,
        }
    }
}

/// Inserts payments in one statement, each as the batch leaves it (a payment cancelled
/// in the batch that made it is inserted cancelled); fails as a whole with a unique
/// violation when one of the orders has one.
pub async fn insert_many(
    conn: &mut MySqlConnection,
    rows: &[&PaymentRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new(
        "INSERT INTO payments (payment_id, order_id, user_id, amount, currency, status, source, balance_after, \
         created_at, cancelled_at, cancel_reason, refund_balance_after, refunded_amount, points, points_refunded) ",
    );
    query.push_values(rows, |mut values, p| {
        values
            .push_bind(&p.payment_id)
            .push_bind(&p.order_id)
            .push_bind(&p.user_id)
            .push_bind(p.amount)
            .push_bind(&p.currency)
            .push_bind(p.status)
            .push_bind(p.source)
            .push_bind(p.balance_after)
            .push_bind(p.created_at)
            .push_bind(p.cancelled_at)
            .push_bind(&p.cancel_reason)
            .push_bind(p.refund_balance_after)
            .push_bind(p.refunded_amount)
            .push_bind(p.points)
            .push_bind(p.points_refunded);
    });
    query.build().execute(conn).await?;
    Ok(())
}

/// The payments of any of `order_ids`, read inside the caller's transaction.
pub async fn find_many(
    conn: &mut MySqlConnection,
    order_ids: &[&str],
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("SELECT * FROM payments WHERE order_id IN ");
    query.push_tuples(super::padded(order_ids), |mut tuple, id| {
        tuple.push_bind(*id);
    });
    query.build_query_as().fetch_all(conn).await
}

pub async fn find(pool: &MySqlPool, order_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM payments WHERE order_id = ?")
        .bind(order_id)
        .fetch_optional(pool)
        .await
}

/// Writes what refunds and cancels changed of payments read before, one statement each
/// (they are few), each on the condition that the payment is still as it was read
/// (`read`: its status and refunded amount then). Returns false (and the caller rolls
/// back) when one was not.
pub async fn update_many(
    conn: &mut MySqlConnection,
    rows: &[(&PaymentRow, PaymentStatus, Decimal)],
) -> Result<bool, sqlx::Error> {
    for (row, status_read, refunded_read) in rows {
        let updated = sqlx::query(
            "UPDATE payments SET status = ?, cancelled_at = ?, cancel_reason = ?, refund_balance_after = ?, \
             refunded_amount = ?, points_refunded = ? \
             WHERE order_id = ? AND status = ? AND refunded_amount = ?",
        )
        .bind(row.status)
        .bind(row.cancelled_at)
        .bind(&row.cancel_reason)
        .bind(row.refund_balance_after)
        .bind(row.refunded_amount)
        .bind(row.points_refunded)
        .bind(&row.order_id)
        .bind(status_read)
        .bind(refunded_read)
        .execute(&mut *conn)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}
