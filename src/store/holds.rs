//! `holds`: funds reserved on a wallet, one row per hold id, settled at most once.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder};

crate::support::text_enum::text_enum! {
    /// Where a hold stands. Only `HELD` is open; the others are final.
    pub enum HoldStatus {
        /// Reserved: counted in the wallet's `held`, not available to spend.
        Held = "HELD",
        /// Debited, in full or in part; the rest was released.
        Captured = "CAPTURED",
        /// Released by request.
        Voided = "VOIDED",
        /// Released at its deadline.
        Expired = "EXPIRED",
    }
}

/// A hold row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRow {
    #[sqlx(try_from = "crate::store::ExactText")]
    pub hold_id: String,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: HoldStatus,
    pub captured_amount: Option<Decimal>,
    /// Points the capture earned.
    pub points: i64,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The wallet's balance and held sum as placing the hold left them.
    pub balance_after: Decimal,
    pub held_after: Decimal,
    pub settled_at: Option<DateTime<Utc>>,
    /// The wallet's balance and held sum as settling the hold left them.
    pub settled_balance_after: Option<Decimal>,
    pub settled_held_after: Option<Decimal>,
}

/// Inserts holds in one statement, each in the state it has now; fails as a whole with a
/// unique violation when one of the hold ids is taken.
pub async fn insert_many(conn: &mut MySqlConnection, rows: &[&HoldRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new(
        "INSERT INTO holds (hold_id, user_id, amount, currency, status, captured_amount, points, \
         expires_at, created_at, balance_after, held_after, settled_at, settled_balance_after, \
         settled_held_after) ",
    );
    query.push_values(rows, |mut values, h| {
        values
            .push_bind(&h.hold_id)
            .push_bind(&h.user_id)
            .push_bind(h.amount)
            .push_bind(&h.currency)
            .push_bind(h.status)
            .push_bind(h.captured_amount)
            .push_bind(h.points)
            .push_bind(h.expires_at)
            .push_bind(h.created_at)
            .push_bind(h.balance_after)
            .push_bind(h.held_after)
            .push_bind(h.settled_at)
            .push_bind(h.settled_balance_after)
            .push_bind(h.settled_held_after);
    });
    query.build().execute(conn).await?;
    Ok(())
}

/// Writes the settlement of holds that were open: one statement, which changes a row
/// only if it is still `HELD`. Returns false (and the caller rolls back) when any was
/// not.
pub async fn settle_many(
    conn: &mut MySqlConnection,
    rows: &[&HoldRow],
) -> Result<bool, sqlx::Error> {
    if rows.is_empty() {
        return Ok(true);
    }
    fn case<T>(
        query: &mut QueryBuilder<'_, MySql>,
        rows: &[&HoldRow],
        value: impl Fn(&HoldRow) -> T,
    ) where
        T: for<'q> sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + 'static,
    {
        query.push("CASE hold_id");
        for row in rows {
            query.push(" WHEN ").push_bind(row.hold_id.clone());
            query.push(" THEN ").push_bind(value(row));
        }
        query.push(" END");
    }
    let mut query = QueryBuilder::new("UPDATE holds SET status = ");
    case(&mut query, rows, |h| h.status);
    query.push(", captured_amount = ");
    case(&mut query, rows, |h| h.captured_amount);
    query.push(", points = ");
    case(&mut query, rows, |h| h.points);
    query.push(", settled_at = ");
    case(&mut query, rows, |h| h.settled_at);
    query.push(", settled_balance_after = ");
    case(&mut query, rows, |h| h.settled_balance_after);
    query.push(", settled_held_after = ");
    case(&mut query, rows, |h| h.settled_held_after);
    query.push(" WHERE hold_id IN ");
    query.push_tuples(rows, |mut tuple, row| {
        tuple.push_bind(row.hold_id.clone());
    });
    query.push(" AND status = ").push_bind(HoldStatus::Held);
    let updated = query.build().execute(conn).await?;
    Ok(updated.rows_affected() == rows.len() as u64)
}

/// The holds of any of `hold_ids`, read inside the caller's transaction (which holds
/// their wallets' row locks: every writer of a hold takes its wallet's first).
pub async fn find_many(
    conn: &mut MySqlConnection,
    hold_ids: &[&str],
) -> Result<Vec<HoldRow>, sqlx::Error> {
    if hold_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("SELECT * FROM holds WHERE hold_id IN ");
    query.push_tuples(super::padded(hold_ids), |mut tuple, id| {
        tuple.push_bind(*id);
    });
    query.build_query_as().fetch_all(conn).await
}

pub async fn find(pool: &MySqlPool, hold_id: &str) -> Result<Option<HoldRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM holds WHERE hold_id = ?")
        .bind(hold_id)
        .fetch_optional(pool)
        .await
}

/// Up to `limit` open holds whose deadline is past, earliest first, with their wallets.
/// Not locked: the sweeper settles each under its wallet's lock, and a hold settled
/// meanwhile is found settled there.
pub async fn expired(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(crate::store::ExactText, crate::store::ExactText)> = sqlx::query_as(
        "SELECT hold_id, user_id FROM holds WHERE status = ? AND expires_at <= ? \
         ORDER BY expires_at LIMIT ?",
    )
    .bind(HoldStatus::Held)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(h, u)| (h.0, u.0)).collect())
}
