//! `ledger_entries`: append-only; the database refuses updates and deletes.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool};

pub const TOP_UP: &str = "TOP_UP";
pub const PAYMENT: &str = "PAYMENT";
pub const REFUND: &str = "REFUND";

/// A ledger entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    pub entry_id: u64,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub entry_type: String,
    pub amount: Decimal,
    pub balance_after: Decimal,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub reference: String,
    pub created_at: DateTime<Utc>,
}

/// Appends an entry; `amount` is signed (a payment is negative).
pub async fn append(
    conn: &mut MySqlConnection,
    user_id: &str,
    entry_type: &str,
    amount: Decimal,
    balance_after: Decimal,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_entries (user_id, entry_type, amount, balance_after, reference, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(user_id)
    .bind(entry_type)
    .bind(amount)
    .bind(balance_after)
    .bind(reference)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// One page of a wallet's entries, newest first, strictly older than `before`.
pub async fn page(
    pool: &MySqlPool,
    user_id: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM ledger_entries WHERE user_id = ? AND entry_id < ? \
         ORDER BY entry_id DESC LIMIT ?",
    )
    .bind(user_id)
    .bind(before.unwrap_or(u64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await
}
