//! `top_ups`: one row per top-up id, so a repeated top-up credits once.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

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

/// Inserts top-ups in one statement; fails as a whole with a unique violation when one
/// of the ids was used before.
pub async fn insert_many(
    conn: &mut MySqlConnection,
    rows: &[&TopUpRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new(
        "INSERT INTO top_ups (top_up_id, user_id, amount, currency, balance_after, created_at) ",
    );
    query.push_values(rows, |mut values, t| {
        values
            .push_bind(&t.top_up_id)
            .push_bind(&t.user_id)
            .push_bind(t.amount)
            .push_bind(&t.currency)
            .push_bind(t.balance_after)
            .push_bind(t.created_at);
    });
    query.build().execute(conn).await?;
    Ok(())
}

/// The top-ups of any of `top_up_ids`, read inside the caller's transaction.
pub async fn find_many(
    conn: &mut MySqlConnection,
    top_up_ids: &[&str],
) -> Result<Vec<TopUpRow>, sqlx::Error> {
    if top_up_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("SELECT * FROM top_ups WHERE top_up_id IN ");
    query.push_tuples(super::padded(top_up_ids), |mut tuple, id| {
        tuple.push_bind(*id);
    });
    query.build_query_as().fetch_all(conn).await
}

pub async fn find(pool: &MySqlPool, top_up_id: &str) -> Result<Option<TopUpRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM top_ups WHERE top_up_id = ?")
        .bind(top_up_id)
        .fetch_optional(pool)
        .await
}
