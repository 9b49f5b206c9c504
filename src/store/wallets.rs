//! `wallets`: one row per user, the balance and the highest fencing token seen.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool};

/// A wallet row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WalletRow {
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub currency: String,
    pub balance: Decimal,
    /// From `wallet_points`; only [`find`] reads it.
    #[sqlx(default)]
    pub points: i64,
    pub fence_token: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Inserts an empty wallet. Returns false when the user already has one.
pub async fn insert(
    pool: &MySqlPool,
    user_id: &str,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO wallets (user_id, currency, balance, fence_token, created_at, updated_at) \
         VALUES (?, ?, 0, 0, ?, ?)",
    )
    .bind(user_id)
    .bind(currency)
    .bind(now)
    .bind(now)
    .execute(pool)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(e) if super::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn find(pool: &MySqlPool, user_id: &str) -> Result<Option<WalletRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT w.*, COALESCE(p.points, 0) AS points FROM wallets w \
         LEFT JOIN wallet_points p ON p.user_id = w.user_id WHERE w.user_id = ?",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

/// Reads the wallet and locks its row until the transaction ends.
pub async fn lock(
    conn: &mut MySqlConnection,
    user_id: &str,
) -> Result<Option<WalletRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM wallets WHERE user_id = ? FOR UPDATE")
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// Adds `delta` (negative for a debit) to the balance, only if the balance stays
/// non-negative and no newer fencing token has written the row. Records `fence` as the
/// newest token. Returns false when a condition failed and nothing was written.
///
/// A caller without a Redis lock (the MySQL fallback) passes `None`: the row lock it
/// holds is its guard, and it leaves the recorded token as it is.
pub async fn apply_delta(
    conn: &mut MySqlConnection,
    user_id: &str,
    delta: Decimal,
    fence: Option<u64>,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE wallets SET balance = balance + ?, fence_token = GREATEST(fence_token, ?), updated_at = ? \
         WHERE user_id = ? AND balance + ? >= 0 AND fence_token <= ?",
    )
    .bind(delta)
    .bind(fence.unwrap_or(0))
    .bind(now)
    .bind(user_id)
    .bind(delta)
    .bind(fence.unwrap_or(u64::MAX))
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}
