//! `orders`: one row per order id, whichever way the order is charged (a payment or a
//! hold), so that an order id never names two charges, whatever the locks above did.

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, QueryBuilder};

/// How an order is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    Payment,
    Hold,
}

impl OrderKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "PAYMENT",
            Self::Hold => "HOLD",
        }
    }
}

/// Records new orders in one statement; fails as a whole with a unique violation when
/// one of the ids names an order already.
pub async fn insert_many(
    conn: &mut MySqlConnection,
    orders: &[(&str, &str, OrderKind)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new("INSERT INTO orders (order_id, user_id, kind, created_at) ");
    query.push_values(orders, |mut values, (order_id, user_id, kind)| {
        values
            .push_bind(*order_id)
            .push_bind(*user_id)
            .push_bind(kind.as_str())
            .push_bind(now);
    });
    query.build().execute(conn).await?;
    Ok(())
}
