//! `refunds`: one row per refund id, so a repeated refund gives back once.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, QueryBuilder};

/// A refund row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundRow {
    #[sqlx(try_from = "crate::store::ExactText")]
    pub refund_id: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub order_id: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub reason: Option<String>,
    /// Points taken back with it.
    pub points: i64,
    /// What the order's refunds came to with this one.
    pub refunded_total: Decimal,
    pub balance_after: Decimal,
    pub created_at: DateTime<Utc>,
}

/// Inserts refunds in one statement; fails as a whole with a unique violation when one
/// of the ids was used before.
pub async fn insert_many(
    conn: &mut MySqlConnection,
    rows: &[&RefundRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new(
        "INSERT INTO refunds (refund_id, order_id, user_id, amount, currency, reason, points, \
         refunded_total, balance_after, created_at) ",
    );
    query.push_values(rows, |mut values, r| {
        values
            .push_bind(&r.refund_id)
            .push_bind(&r.order_id)
            .push_bind(&r.user_id)
            .push_bind(r.amount)
            .push_bind(&r.currency)
            .push_bind(&r.reason)
            .push_bind(r.points)
            .push_bind(r.refunded_total)
            .push_bind(r.balance_after)
            .push_bind(r.created_at);
    });
    query.build().execute(conn).await?;
    Ok(())
}

/// The refunds of any of `refund_ids`, read inside the caller's transaction.
pub async fn find_many(
    conn: &mut MySqlConnection,
    refund_ids: &[&str],
) -> Result<Vec<RefundRow>, sqlx::Error> {
    if refund_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("SELECT * FROM refunds WHERE refund_id IN ");
    query.push_tuples(super::padded(refund_ids), |mut tuple, id| {
        tuple.push_bind(*id);
    });
    query.build_query_as().fetch_all(conn).await
}
