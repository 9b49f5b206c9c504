//! The ledger audit: the invariants of the money, read straight from MySQL. Used by the
//! tests after every concurrent load and by `ledger-audit` after a load test.

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::store::ExactText;

/// What the audit saw, and every invariant that does not hold.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub wallets: i64,
    pub payments: i64,
    pub top_ups: Decimal,
    pub paid: Decimal,
    pub refunded: Decimal,
    pub balances: Decimal,
    /// Outbox rows not yet acknowledged by the broker.
    pub outbox_pending: i64,
    /// Wallets whose applied points differ from what their completed payments earned.
    pub points_mismatches: i64,
    /// Broken invariants, in words; empty when the money is right.
    pub violations: Vec<String>,
}

/// Checks, for the whole database:
/// - every balance equals the sum of its wallet's ledger entries and is never negative;
/// - every payment has exactly one PAYMENT entry, and one REFUND entry iff cancelled;
/// - no PAYMENT entry lacks its payment;
/// - top-ups − payments + refunds = Σ balances (no money created or lost).
///
/// Unique keys make a second payment per order impossible; the audit reports the counts.
pub async fn audit(db: &MySqlPool) -> Result<AuditReport, sqlx::Error> {
    let mut violations = Vec::new();
    let rows = sqlx::query(
        "SELECT w.user_id, w.balance, COALESCE(SUM(l.amount), 0) AS ledger \
         FROM wallets w LEFT JOIN ledger_entries l ON l.user_id = w.user_id \
         GROUP BY w.user_id, w.balance HAVING w.balance <> ledger OR w.balance < 0 LIMIT 20",
    )
    .fetch_all(db)
    .await?;
    for row in rows {
        let user: String = row.get::<ExactText, _>("user_id").into();
        let balance: Decimal = row.get("balance");
        let ledger: Decimal = row.get("ledger");
        violations.push(format!(
            "wallet {user}: balance {balance}, ledger sum {ledger}"
        ));
    }
    let count =
        |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(db).await };
    let unmatched = count(
        "SELECT COUNT(*) FROM payments p WHERE \
         (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'PAYMENT' \
            AND l.reference = p.order_id AND l.amount = -p.amount) <> 1 \
         OR (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'REFUND' \
            AND l.reference = p.order_id) <> (p.status = 'CANCELLED')",
    )
    .await?;
    if unmatched > 0 {
        violations.push(format!(
            "{unmatched} payments without exactly their ledger entries"
        ));
    }
    let orphans = count(
        "SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'PAYMENT' \
         AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = l.reference)",
    )
    .await?;
    if orphans > 0 {
        violations.push(format!("{orphans} ledger debits without a payment"));
    }
    let sum = |sql: &'static str| async move {
        sqlx::query_scalar::<_, Option<Decimal>>(sql)
            .fetch_one(db)
            .await
            .map(Option::unwrap_or_default)
    };
    let top_ups = sum("SELECT SUM(amount) FROM top_ups").await?;
    let paid = sum("SELECT SUM(amount) FROM payments").await?;
    let refunded = sum("SELECT SUM(amount) FROM payments WHERE status = 'CANCELLED'").await?;
    let balances = sum("SELECT SUM(balance) FROM wallets").await?;
    if top_ups - paid + refunded != balances {
        violations.push(format!(
            "money created or lost: top-ups {top_ups} - payments {paid} + refunds {refunded} != balances {balances}"
        ));
    }
    Ok(AuditReport {
        wallets: count("SELECT COUNT(*) FROM wallets").await?,
        payments: count("SELECT COUNT(*) FROM payments").await?,
        top_ups,
        paid,
        refunded,
        balances,
        outbox_pending: count("SELECT COUNT(*) FROM outbox_events WHERE sent_at IS NULL").await?,
        points_mismatches: count(
            "SELECT COUNT(*) FROM (SELECT user_id, SUM(IF(status = 'COMPLETED', points, 0)) AS earned \
             FROM payments GROUP BY user_id) e LEFT JOIN wallet_points w ON w.user_id = e.user_id \
             WHERE COALESCE(w.points, 0) <> e.earned",
        )
        .await?,
        violations,
    })
}

/// The order ids among `order_ids` that have no payment (a client saw a success for
/// each of them, so there must be none).
pub async fn missing_payments(
    db: &MySqlPool,
    order_ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let mut missing = Vec::new();
    for chunk in order_ids.chunks(500) {
        let mut query =
            sqlx::QueryBuilder::new("SELECT order_id FROM payments WHERE order_id IN (");
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(id);
        }
        list.push_unseparated(")");
        let found: Vec<ExactText> = query.build_query_scalar().fetch_all(db).await?;
        let found: std::collections::HashSet<String> =
            found.into_iter().map(String::from).collect();
        missing.extend(chunk.iter().filter(|id| !found.contains(*id)).cloned());
    }
    Ok(missing)
}
