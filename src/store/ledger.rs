//! `ledger_entries`: append-only; the database refuses updates and deletes.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

crate::support::text_enum::text_enum! {
    /// What moved the money; with the reference, unique: nothing is booked twice.
    pub enum EntryType {
        /// Credit; the reference is the top-up id.
        TopUp = "TOP_UP",
        /// Debit; the reference is the order id.
        Payment = "PAYMENT",
        /// Credit of what remained of a cancelled payment; the reference is the order id.
        Refund = "REFUND",
        /// Credit of a refund (of part or all of a payment); the reference is the
        /// refund id.
        PartialRefund = "PARTIAL_REFUND",
        /// Funds reserved (`heldDelta` > 0, amount 0); the reference is the hold id.
        Hold = "HOLD",
        /// A hold debited (amount < 0) and released (`heldDelta` < 0).
        Capture = "CAPTURE",
        /// A hold released by request (`heldDelta` < 0, amount 0).
        Void = "VOID",
        /// A hold released at its deadline (`heldDelta` < 0, amount 0).
        Expiry = "EXPIRY",
    }
}

/// A ledger entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    pub entry_id: u64,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub user_id: String,
    pub entry_type: EntryType,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub held_delta: Decimal,
    pub held_after: Decimal,
    #[sqlx(try_from = "crate::store::ExactText")]
    pub reference: String,
    pub created_at: DateTime<Utc>,
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub user_id: String,
    pub entry_type: EntryType,
    /// Signed: a payment is negative.
    pub amount: Decimal,
    pub balance_after: Decimal,
    /// Signed change of the sum held: a hold is positive, its settlement negative.
    pub held_delta: Decimal,
    pub held_after: Decimal,
    pub reference: String,
}

impl NewEntry {
    /// An entry that moves the balance by `amount` and leaves what is held as it is.
    pub fn money(
        user_id: &str,
        entry_type: EntryType,
        amount: Decimal,
        (balance_after, held): (Decimal, Decimal),
        reference: &str,
    ) -> Self {
        Self {
            user_id: user_id.to_owned(),
            entry_type,
            amount,
            balance_after,
            held_delta: Decimal::ZERO,
            held_after: held,
            reference: reference.to_owned(),
        }
    }
}

/// Appends an entry.
pub async fn append(
    conn: &mut MySqlConnection,
    entry: NewEntry,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    append_many(conn, &[entry], now).await
}

/// Appends entries in one statement, in order (entry ids follow it).
pub async fn append_many(
    conn: &mut MySqlConnection,
    entries: &[NewEntry],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new(
        "INSERT INTO ledger_entries (user_id, entry_type, amount, balance_after, held_delta, held_after, reference, created_at) ",
    );
    query.push_values(entries, |mut values, e| {
        values
            .push_bind(&e.user_id)
            .push_bind(e.entry_type)
            .push_bind(e.amount)
            .push_bind(e.balance_after)
            .push_bind(e.held_delta)
            .push_bind(e.held_after)
            .push_bind(&e.reference)
            .push_bind(now);
    });
    query.build().execute(conn).await?;
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
