//! The ledger audit: the invariants of the money, read straight from MySQL. Used by the
//! tests after every concurrent load and by `ledger-audit` after a load test.

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::store::ExactText;
use crate::support::percentile::nearest_rank;

/// What the audit saw, and every invariant that does not hold.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub wallets: i64,
    pub payments: i64,
    pub top_ups: Decimal,
    pub paid: Decimal,
    /// What refunds and cancels gave back.
    pub refunded: Decimal,
    /// What captured holds debited.
    pub captured: Decimal,
    pub balances: Decimal,
    pub holds: i64,
    /// The sum of open holds over every wallet.
    pub held: Decimal,
    /// Outbox rows not yet acknowledged by the broker.
    pub outbox_pending: i64,
    /// Wallets whose applied points differ from what their payments earned, less what
    /// refunds and cancels took back.
    pub points_mismatches: i64,
    /// Orders charged twice under one id, by a payment and a hold (possible only in
    /// data written before one charge per order was enforced).
    pub orders_charged_twice: i64,
    /// From an event's outbox row to its application by the points consumer, over every
    /// applied event; only with [`event_latency`] (`ledger-audit --events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_latency_ms: Option<Percentiles>,
    /// Broken invariants, in words; empty when the money is right.
    pub violations: Vec<String>,
}

/// Milliseconds at the 50th, 95th and 99th percentile, the largest, and how many.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// How long events took from the outbox (written in the payment's transaction) to the
/// points consumer's transaction that applied them; `None` when none was applied.
pub async fn event_latency(db: &MySqlPool) -> Result<Option<Percentiles>, sqlx::Error> {
    let mut micros: Vec<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, o.created_at, p.processed_at) \
         FROM processed_events p JOIN outbox_events o ON o.event_id = p.event_id",
    )
    .fetch_all(db)
    .await?;
    if micros.is_empty() {
        return Ok(None);
    }
    micros.sort_unstable();
    let at = |q: f64| nearest_rank(&micros, q).map_or(0.0, |us| us as f64 / 1000.0);
    Ok(Some(Percentiles {
        count: micros.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }))
}

/// Checks, for the whole database:
/// - every balance equals the sum of its wallet's ledger entries and is never negative;
/// - every wallet's `held` equals the sum of its entries' `held_delta` and the sum of
///   its open holds, and lies between 0 and the balance;
/// - every payment has exactly one PAYMENT entry (a captured hold's payment: none, its
///   hold has the CAPTURE entry), one PARTIAL_REFUND entry per refund, and one REFUND
///   entry iff cancelled; what they gave back is its `refunded_amount`, at most its
///   amount (Σ refunds ≤ payment, per order);
/// - every refund matches its entry;
/// - no order id names both a payment and a hold, but a captured hold's own payment;
/// - every hold has one HOLD entry, and one entry of its settlement iff settled;
/// - no PAYMENT entry lacks its payment;
/// - top-ups − payments + refunds − captures = Σ balances (no money created or lost),
///   where payments are those made by debits (a capture's is counted as the capture).
///
/// Unique keys make a second payment per order impossible; the audit reports the counts.
pub async fn audit(db: &MySqlPool) -> Result<AuditReport, sqlx::Error> {
    let mut violations = Vec::new();
    let rows = sqlx::query(
        "SELECT w.user_id, w.balance, w.held, COALESCE(SUM(l.amount), 0) AS ledger, \
           COALESCE(SUM(l.held_delta), 0) AS ledger_held, \
           (SELECT COALESCE(SUM(h.amount), 0) FROM holds h \
             WHERE h.user_id = w.user_id AND h.status = 'HELD') AS open_holds \
         FROM wallets w LEFT JOIN ledger_entries l ON l.user_id = w.user_id \
         GROUP BY w.user_id, w.balance, w.held \
         HAVING w.balance <> ledger OR w.balance < 0 OR w.held <> ledger_held \
           OR w.held <> open_holds OR w.held < 0 OR w.held > w.balance LIMIT 20",
    )
    .fetch_all(db)
    .await?;
    for row in rows {
        let user: String = row.get::<ExactText, _>("user_id").into();
        let balance: Decimal = row.get("balance");
        let ledger: Decimal = row.get("ledger");
        let held: Decimal = row.get("held");
        let ledger_held: Decimal = row.get("ledger_held");
        let open_holds: Decimal = row.get("open_holds");
        violations.push(format!(
            "wallet {user}: balance {balance}, ledger sum {ledger}; held {held}, \
             ledger held sum {ledger_held}, open holds {open_holds}"
        ));
    }
    let count =
        |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(db).await };
    let unmatched = count(
        "SELECT COUNT(*) FROM payments p WHERE \
         (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'PAYMENT' \
            AND l.reference = p.order_id AND l.amount = -p.amount) <> (p.source = 'DEBIT') \
         OR (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'REFUND' \
            AND l.reference = p.order_id) <> (p.status = 'CANCELLED') \
         OR p.refunded_amount > p.amount \
         OR p.refunded_amount <> \
            (SELECT COALESCE(SUM(r.amount), 0) FROM refunds r WHERE r.order_id = p.order_id) \
            + (SELECT COALESCE(SUM(l.amount), 0) FROM ledger_entries l \
               WHERE l.entry_type = 'REFUND' AND l.reference = p.order_id) \
         OR p.points_refunded <> \
            (SELECT COALESCE(SUM(r.points), 0) FROM refunds r WHERE r.order_id = p.order_id) \
            + IF(p.status = 'CANCELLED', p.points - \
                (SELECT COALESCE(SUM(r.points), 0) FROM refunds r WHERE r.order_id = p.order_id), 0)",
    )
    .await?;
    if unmatched > 0 {
        violations.push(format!(
            "{unmatched} payments without exactly their ledger entries"
        ));
    }
    let unbooked_holds = count(
        "SELECT COUNT(*) FROM holds h WHERE \
         (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'HOLD' \
            AND l.reference = h.hold_id AND l.held_delta = h.amount) <> 1 \
         OR (SELECT COUNT(*) FROM ledger_entries l \
            WHERE l.entry_type IN ('CAPTURE', 'VOID', 'EXPIRY') AND l.reference = h.hold_id \
              AND l.held_delta = -h.amount \
              AND l.amount = -COALESCE(h.captured_amount, 0) \
              AND l.entry_type = CASE h.status WHEN 'CAPTURED' THEN 'CAPTURE' \
                WHEN 'VOIDED' THEN 'VOID' ELSE 'EXPIRY' END) <> (h.status <> 'HELD')",
    )
    .await?;
    if unbooked_holds > 0 {
        violations.push(format!(
            "{unbooked_holds} holds without exactly their ledger entries"
        ));
    }
    let unbooked_refunds = count(
        "SELECT COUNT(*) FROM refunds r WHERE \
         (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'PARTIAL_REFUND' \
            AND l.reference = r.refund_id AND l.amount = r.amount AND l.user_id = r.user_id) <> 1 \
         OR NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = r.order_id)",
    )
    .await?;
    if unbooked_refunds > 0 {
        violations.push(format!(
            "{unbooked_refunds} refunds without exactly their ledger entry or payment"
        ));
    }
    let orders_charged_twice = count(
        "SELECT COUNT(*) FROM payments p JOIN holds h ON h.hold_id = p.order_id \
         WHERE p.source = 'DEBIT'",
    )
    .await?;
    if orders_charged_twice > 0 {
        violations.push(format!(
            "{orders_charged_twice} orders charged by both a payment and a hold under one id"
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
    let paid = sum("SELECT SUM(amount) FROM payments WHERE source = 'DEBIT'").await?;
    let refunded = sum("SELECT SUM(refunded_amount) FROM payments").await?;
    let captured = sum("SELECT SUM(captured_amount) FROM holds").await?;
    let balances = sum("SELECT SUM(balance) FROM wallets").await?;
    if top_ups - paid + refunded - captured != balances {
        violations.push(format!(
            "money created or lost: top-ups {top_ups} - payments {paid} + refunds {refunded} \
             - captures {captured} != balances {balances}"
        ));
    }
    Ok(AuditReport {
        wallets: count("SELECT COUNT(*) FROM wallets").await?,
        payments: count("SELECT COUNT(*) FROM payments").await?,
        top_ups,
        paid,
        refunded,
        captured,
        balances,
        holds: count("SELECT COUNT(*) FROM holds").await?,
        held: sum("SELECT SUM(held) FROM wallets").await?,
        outbox_pending: count("SELECT COUNT(*) FROM outbox_events WHERE sent_at IS NULL").await?,
        points_mismatches: count(
            "SELECT COUNT(*) FROM (SELECT user_id, SUM(earned) AS earned FROM ( \
               SELECT user_id, points - points_refunded AS earned FROM payments \
               UNION ALL SELECT h.user_id, h.points FROM holds h WHERE h.status = 'CAPTURED' \
                 AND NOT EXISTS (SELECT 1 FROM payments p \
                   WHERE p.order_id = h.hold_id AND p.source = 'CAPTURE')) x \
             GROUP BY user_id) e LEFT JOIN wallet_points w ON w.user_id = e.user_id \
             WHERE COALESCE(w.points, 0) <> e.earned",
        )
        .await?,
        orders_charged_twice,
        event_latency_ms: None,
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
