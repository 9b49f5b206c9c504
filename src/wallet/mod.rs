//! The wallet use cases: create, top up, pay, cancel, hold, capture, void, read.
//!
//! Every money movement is a request ([`requests`]) that the engine ([`engine`])
//! applies in a batch: Redis idempotency claims, Redis wallet locks with fencing
//! tokens, one MySQL transaction in which the money rules ([`rules`]) decide each
//! request, release, cached replies; or, while Redis is unavailable, the same batch
//! guarded by `SELECT … FOR UPDATE` alone.

mod attempt;
mod engine;
mod holds;
mod refusals;
mod replay;
pub mod requests;
mod rules;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::Notify;

use crate::breaker::RedisBreaker;
use crate::domain::{Amount, Currency, Identifier};
use crate::idempotency::IdempotencyCache;
use crate::lock::WalletLock;
use crate::redis_support::{RedisFault, SharedRedis};
use crate::store;
pub use holds::sweep;
pub use refusals::{HoldRefusal, RefundRefusal, Refusal};
use requests::{CancelPayment, Debit, Refund, TopUp};
pub use requests::{PlaceHold, Settlement};
use views::{LedgerEntryView, LedgerPage, PaymentView, RefundView, TopUpView, WalletView};

/// Why a use case did not succeed. Every variant leaves the ledger untouched.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Validation(String),
    #[error("wallet not found")]
    WalletNotFound,
    #[error("payment not found")]
    PaymentNotFound,
    #[error("hold not found")]
    HoldNotFound,
    /// The hold was settled otherwise (captured, voided or expired): it is as shown.
    #[error("the hold is {}", .0.status)]
    HoldNotOpen(Box<views::HoldView>),
    #[error("the capture is larger than the hold")]
    CaptureExceedsHold,
    #[error("the refund is larger than what remains of the payment")]
    RefundExceedsPayment,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the balance would exceed its limit")]
    BalanceLimit,
    #[error("the same request is being processed")]
    InProgress { retry_after: Duration },
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("the wallet is busy")]
    LockTimeout,
    #[error("the request took too long and was rolled back")]
    Timeout,
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Redis failed before anything was applied: the request may go on without it, on
    /// the MySQL path ([`crate::breaker`]), or answer like [`ServiceError::Unavailable`].
    #[error(transparent)]
    Redis(#[from] RedisFault),
}

/// A successful answer and whether it is a replay of an earlier one.
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    pub replayed: bool,
}

/// The use cases; cheap to clone (one reference count and the engine queue's sender),
/// which matters: every request clones it. Built once in `startup`.
#[derive(Clone)]
pub struct WalletService {
    core: Arc<WalletCore>,
    /// The group-commit queue every money movement goes through.
    engine: engine::Engine,
}

/// What the use cases share: pools, the lock, the cache, the breaker and settings.
pub struct WalletCore {
    pub(crate) db: MySqlPool,
    pub(crate) redis: SharedRedis,
    pub(crate) lock: WalletLock,
    pub(crate) idempotency: IdempotencyCache,
    pub(crate) breaker: RedisBreaker,
    pub(crate) currency: Currency,
    pub(crate) lock_wait: Duration,
    /// A money movement that has not committed by then rolls back (503).
    pub(crate) request_timeout: Duration,
    /// Points per unit paid.
    pub(crate) points_rate: rust_decimal::Decimal,
    /// Wakes the outbox relay after a commit that wrote an event.
    pub(crate) outbox_wake: Arc<Notify>,
    /// Longest sleep of a request waiting for a wallet another process holds.
    pub(crate) lock_poll: Duration,
    /// When waiting events make the outbox `lagging` or `stalled` in `/readyz`.
    pub(crate) outbox_stall_after: Duration,
    pub(crate) holds: crate::configuration::HoldSettings,
}

impl std::ops::Deref for WalletService {
    type Target = WalletCore;

    fn deref(&self) -> &WalletCore {
        &self.core
    }
}

impl WalletService {
    /// The use cases over `core`, and the engine's dispatcher, which the application
    /// runs as a task: money movements go in batches of at most `batch_max`.
    pub fn new(
        core: WalletCore,
        batch_max: usize,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let core = Arc::new(core);
        let (engine, dispatcher) = engine::Engine::new(core.clone(), batch_max);
        (Self { core, engine }, dispatcher)
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Creates an empty wallet; `replayed` is true when the user already had one.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn create_wallet(
        &self,
        user_id: &Identifier,
    ) -> Result<Outcome<WalletView>, ServiceError> {
        let created = store::wallets::insert(
            &self.db,
            user_id.as_str(),
            self.currency.code(),
            crate::support::clock::now(),
        )
        .await
        .map_err(unavailable)?;
        let wallet = self.wallet(user_id).await?;
        Ok(Outcome {
            value: wallet,
            replayed: !created,
        })
    }

    pub async fn wallet(&self, user_id: &Identifier) -> Result<WalletView, ServiceError> {
        let row = store::wallets::find(&self.db, user_id.as_str())
            .await
            .map_err(unavailable)?
            .ok_or(ServiceError::WalletNotFound)?;
        Ok(WalletView::new(&row, self.currency))
    }

    /// Credits a wallet once per `top_up_id`.
    #[tracing::instrument(skip_all, fields(top_up_id = %top_up_id, user_id = %user_id))]
    pub async fn top_up(
        &self,
        top_up_id: Identifier,
        user_id: Identifier,
        amount: Amount,
    ) -> Result<Outcome<TopUpView>, ServiceError> {
        let top_up = TopUp {
            top_up_id,
            user_id,
            amount,
        };
        self.submit(top_up, engine::Request::TopUp).await
    }

    /// Debits a wallet once per `order_id`.
    #[tracing::instrument(skip_all, fields(order_id = %order_id, user_id = %user_id))]
    pub async fn pay(
        &self,
        order_id: Identifier,
        user_id: Identifier,
        amount: Amount,
    ) -> Result<Outcome<PaymentView>, ServiceError> {
        let debit = Debit {
            order_id,
            user_id,
            amount,
        };
        self.submit(debit, engine::Request::Debit).await
    }

    /// Queues `request` for the next batch and waits for its answer.
    async fn submit<R: requests::Keyed, T>(
        &self,
        request: R,
        kind: fn(engine::Ticket<R, T>) -> engine::Request,
    ) -> Result<Outcome<T>, ServiceError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        self.engine
            .submit(request, kind, deadline, self.lock_wait)
            .await
    }

    /// Cancels a payment and credits its amount back, once.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn cancel(
        &self,
        order_id: Identifier,
        reason: Option<String>,
    ) -> Result<Outcome<PaymentView>, ServiceError> {
        let payment = store::payments::find(&self.db, order_id.as_str())
            .await
            .map_err(unavailable)?
            .ok_or(ServiceError::PaymentNotFound)?;
        let user_id = Identifier::parse("userId", payment.user_id).map_err(unavailable)?;
        tracing::Span::current().record("user_id", tracing::field::display(&user_id));
        let cancel = CancelPayment {
            order_id,
            user_id,
            reason,
        };
        self.submit(cancel, engine::Request::Cancel).await
    }

    /// Gives back `amount` of a payment (all that remains when `None`), once per
    /// `refund_id`.
    #[tracing::instrument(skip_all, fields(refund_id = %refund_id, order_id = %order_id))]
    pub async fn refund(
        &self,
        refund_id: Identifier,
        order_id: Identifier,
        amount: Option<Amount>,
        reason: Option<String>,
    ) -> Result<Outcome<RefundView>, ServiceError> {
        let payment = store::payments::find(&self.db, order_id.as_str())
            .await
            .map_err(unavailable)?
            .ok_or(ServiceError::PaymentNotFound)?;
        let user_id = Identifier::parse("userId", payment.user_id).map_err(unavailable)?;
        tracing::Span::current().record("user_id", tracing::field::display(&user_id));
        let refund = Refund {
            refund_id,
            order_id,
            user_id,
            amount,
            reason,
        };
        let outcome = self.submit(refund.clone(), engine::Request::Refund).await?;
        refund.answer(outcome)
    }

    pub async fn payment(&self, order_id: &Identifier) -> Result<PaymentView, ServiceError> {
        let row = store::payments::find(&self.db, order_id.as_str())
            .await
            .map_err(unavailable)?
            .ok_or(ServiceError::PaymentNotFound)?;
        Ok(PaymentView::current(&row, self.currency))
    }

    /// A page of the wallet's ledger, newest first.
    pub async fn transactions(
        &self,
        user_id: &Identifier,
        before: Option<u64>,
        limit: u32,
    ) -> Result<LedgerPage, ServiceError> {
        self.wallet(user_id).await?;
        let rows = store::ledger::page(&self.db, user_id.as_str(), before, limit + 1)
            .await
            .map_err(unavailable)?;
        let (items, next_cursor) = crate::support::pagination::paginate(
            &rows,
            limit,
            |row| LedgerEntryView::new(row, self.currency),
            |entry| &entry.entry_id,
        );
        Ok(LedgerPage { items, next_cursor })
    }

    /// `mysql` and `redis` reachability and the lock mode in use, for `/readyz`.
    pub async fn readiness(&self) -> Readiness {
        let mysql = sqlx::query("SELECT 1").execute(&self.db).await.is_ok();
        let redis = async {
            let mut conn = self.redis.connection().await?;
            crate::redis_support::bounded(
                self.redis.timeout(),
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await
        }
        .await
        .is_ok();
        Readiness {
            mysql,
            redis,
            lock_mode: self.breaker.mode().as_str(),
            outbox: crate::outbox::backlog(&self.db, self.outbox_stall_after)
                .await
                .ok(),
        }
    }
}

/// What `/readyz` reports.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub mysql: bool,
    pub redis: bool,
    pub lock_mode: &'static str,
    /// Unsent outbox rows; `None` when MySQL did not answer.
    pub outbox: Option<crate::outbox::Backlog>,
}

impl WalletCore {
    /// Counts a Redis failure against the breaker and drops the shared connection.
    fn redis_failed(&self, fault: &RedisFault) {
        self.redis.reset();
        self.breaker.record_failure(fault);
    }
}

fn unavailable(e: impl Into<anyhow::Error>) -> ServiceError {
    ServiceError::Unavailable(e.into())
}
