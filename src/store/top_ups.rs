//! `top_ups`: one row per top-up id, so a repeated top-up credits once.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool};

/// A top-up row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TopUpRow {
    #[sqlx(try_from = "crate::store::ExactText")]
    pub top_up_id: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub balance_after: Decimal,
    pub created_at: DateTime<Utc>,
}

/// Inserts a top-up; fails with a unique violation when the id was used before.
pub async fn insert(conn: &mut MySqlConnection, t: &TopUpRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO top_ups (top_up_id, user_id, amount, currency, balance_after, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&t.top_up_id)
    .bind(&t.user_id)
    .bind(t.amount)
    .bind(&t.currency)
    .bind(t.balance_after)
    .bind(t.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find(pool: &MySqlPool, top_up_id: &str) -> Result<Option<TopUpRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM top_ups WHERE top_up_id = ?")
        .bind(top_up_id)
        .fetch_optional(pool)
        .await
}
