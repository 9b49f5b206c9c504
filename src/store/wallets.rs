//! `wallets`: one row per user, the balance, the sum held, and the highest fencing
//! token seen.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder};

/// A wallet row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WalletRow {
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub currency: String,
    pub balance: Decimal,
    /// The sum of the wallet's open holds; `balance - held` is available to spend.
    pub held: Decimal,
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
    super::inserted(inserted)
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

/// Adds `delta` (negative for a debit) to the balance, only if the balance still covers
/// what is held and no newer fencing token has written the row. Records `fence` as the
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
    let delta = Delta {
        user_id,
        amount: delta,
        held: Decimal::ZERO,
        fence,
        expected: None,
    };
    apply_deltas(conn, &[delta], now).await
}

/// One wallet's net change in a batch.
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    pub user_id: &'a str,
    /// Negative for a net debit.
    pub amount: Decimal,
    /// The change of the sum held: positive for net new holds.
    pub held: Decimal,
    pub fence: Option<u64>,
    /// The balance and sum held the change was decided on: the row is written only if
    /// it still holds them (a batch may decide a wallet from its lock's note, without reading
    /// its row). `None` leaves them unchecked.
    pub expected: Option<(Decimal, Decimal)>,
}

/// [`apply_delta`] for many wallets in one statement: every wallet's conditions are
/// checked in the `WHERE`, so it returns true only when every row was written.
pub async fn apply_deltas(
    conn: &mut MySqlConnection,
    deltas: &[Delta<'_>],
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    if deltas.is_empty() {
        return Ok(true);
    }
    // One `CASE user_id WHEN … THEN … END` per per-wallet value.
    fn case<T>(
        query: &mut QueryBuilder<'_, MySql>,
        deltas: &[Delta<'_>],
        value: impl Fn(&Delta<'_>) -> T,
    ) where
        T: for<'q> sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send + 'static,
    {
        query.push("CASE user_id");
        for delta in super::padded(deltas) {
            query.push(" WHEN ").push_bind(delta.user_id.to_owned());
            query.push(" THEN ").push_bind(value(delta));
        }
        query.push(" END");
    }
    let mut query = QueryBuilder::new("UPDATE wallets SET balance = balance + ");
    case(&mut query, deltas, |d| d.amount);
    query.push(", held = held + ");
    case(&mut query, deltas, |d| d.held);
    query.push(", fence_token = GREATEST(fence_token, ");
    case(&mut query, deltas, |d| d.fence.unwrap_or(0));
    query.push("), updated_at = ").push_bind(now);
    query.push(" WHERE user_id IN ");
    query.push_tuples(super::padded(deltas), |mut tuple, delta| {
        tuple.push_bind(delta.user_id.to_owned());
    });
    // The old values: MySQL evaluates `WHERE` before `SET`. What stays held must be
    // covered by what stays in the balance, and nothing is held below zero.
    query.push(" AND balance + ");
    case(&mut query, deltas, |d| d.amount);
    query.push(" >= held + ");
    case(&mut query, deltas, |d| d.held);
    query.push(" AND held + ");
    case(&mut query, deltas, |d| d.held);
    query.push(" >= 0 AND fence_token <= ");
    case(&mut query, deltas, |d| d.fence.unwrap_or(u64::MAX));
    // The funds the change was decided on, where given (NULL: unchecked).
    query.push(" AND balance = COALESCE(");
    case(&mut query, deltas, |d| {
        d.expected.map(|(balance, _)| balance)
    });
    query.push(", balance) AND held = COALESCE(");
    case(&mut query, deltas, |d| d.expected.map(|(_, held)| held));
    query.push(", held)");
    let updated = query.build().execute(conn).await?;
    Ok(updated.rows_affected() == deltas.len() as u64)
}

/// Reads the wallets of `user_ids` and locks their rows until the transaction ends.
/// InnoDB takes the row locks in primary-key order whatever the order of the list, so
/// two batches never wait for each other in a circle.
pub async fn lock_many(
    conn: &mut MySqlConnection,
    user_ids: &[&str],
) -> Result<Vec<WalletRow>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("SELECT * FROM wallets WHERE user_id IN ");
    query.push_tuples(super::padded(user_ids), |mut tuple, id| {
        tuple.push_bind(*id);
    });
    query.push(" ORDER BY user_id FOR UPDATE");
    query.build_query_as().fetch_all(conn).await
}
