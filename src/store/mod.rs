//! MySQL access: the pool and one module of queries per table.

pub mod holds;
pub mod ledger;
pub mod orders;
pub mod payments;
pub mod refunds;
pub mod top_ups;
pub mod wallets;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlTypeInfo};
use sqlx::{Decode, Executor, Type};

use crate::configuration::DatabaseSettings;

/// `items` and the last of them again, up to the next power of two: for the `IN` lists
/// and `CASE`s of batched statements. MariaDB and MySQL prepare each statement text once
/// per connection, and a list of any length would make a text per length.
pub fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let len = items.len();
    let extra = len.next_power_of_two() - len;
    items
        .iter()
        .chain(items.last().into_iter().cycle().take(extra))
}

/// Opens the pool. Every connection runs READ COMMITTED (no gap locks between inserts of
/// different orders) and waits for a row lock no longer than `lock_wait_secs`.
pub async fn connect(
    settings: &DatabaseSettings,
    lock_wait_secs: u64,
) -> Result<MySqlPool, sqlx::Error> {
    let options: MySqlConnectOptions = settings.url.parse()?;
    let lock_wait = format!(
        "SET SESSION innodb_lock_wait_timeout = {}",
        lock_wait_secs.max(1)
    );
    MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .after_connect(move |conn, _| {
            let lock_wait = lock_wait.clone();
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                conn.execute(lock_wait.as_str()).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// True when `error` is a duplicate-key violation.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// The outcome of an insert keyed by a unique id: `true` when the row was written,
/// `false` when a row with that key was there already.
pub fn inserted<T>(result: Result<T, sqlx::Error>) -> Result<bool, sqlx::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// True for a deadlock or a lock-wait timeout: the transaction was rolled back and
/// nothing of it applied.
pub fn is_lock_conflict(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| {
        matches!(
            e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number()),
            Some(1205 | 1213)
        )
    })
}

/// Text of a byte-exact identifier column (`utf8mb4_bin`, see the migration
/// `byte_exact_identifiers`).
///
/// The server flags a `_bin` column as binary and sqlx then refuses to decode it as a
/// `String`, although it holds UTF-8 text. Rows read such columns through this type:
/// `#[sqlx(try_from = "ExactText")]` on a `String` field, or `ExactText` in a scalar
/// query followed by `.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactText(pub String);

impl Type<MySql> for ExactText {
    fn type_info() -> MySqlTypeInfo {
        <str as Type<MySql>>::type_info()
    }

    fn compatible(ty: &MySqlTypeInfo) -> bool {
        // Text or binary-flagged text: the bytes are checked as UTF-8 when decoded.
        <str as Type<MySql>>::compatible(ty) || <[u8] as Type<MySql>>::compatible(ty)
    }
}

impl<'r> Decode<'r, MySql> for ExactText {
    fn decode(value: sqlx::mysql::MySqlValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let bytes = <&[u8] as Decode<MySql>>::decode(value)?;
        Ok(Self(std::str::from_utf8(bytes)?.to_owned()))
    }
}

impl From<ExactText> for String {
    fn from(text: ExactText) -> Self {
        text.0
    }
}

#[cfg(test)]
mod tests {
    use super::holds::HoldStatus;
    use super::ledger::EntryType;
    use super::payments::PaymentStatus;
    use crate::support::text_enum::assert_same_text_everywhere;

    #[test]
    fn statuses_and_entry_types_read_and_write_their_column_text() {
        assert_same_text_everywhere(PaymentStatus::ALL, |s| s.as_str());
        assert_same_text_everywhere(EntryType::ALL, |t| t.as_str());
        assert_same_text_everywhere(HoldStatus::ALL, |s| s.as_str());
    }
}
