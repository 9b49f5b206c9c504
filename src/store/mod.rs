//! MySQL access: the pool and one module of queries per table.

pub mod ledger;
pub mod payments;
pub mod top_ups;
pub mod wallets;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::Executor;

use crate::configuration::DatabaseSettings;

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
