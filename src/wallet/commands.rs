//! The three money movements. Each runs inside a transaction that already holds the
//! wallet's row lock and has checked the fencing token.

use std::future::Future;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{MySqlConnection, MySqlPool};

use super::attempt::Failure;
use super::replay;
use super::views::{PaymentView, TopUpView};
use super::{balance_capacity, balance_limit, Outcome, ServiceError};
use crate::domain::events::{points_for, PaymentEvent, PAYMENT_CANCELLED, PAYMENT_COMPLETED};
use crate::domain::{Amount, Currency, Identifier};
use crate::outbox;
use crate::store::{self, ledger, payments, top_ups, wallets::WalletRow};

/// What a command needs to know about the transaction it runs in.
pub struct TxContext {
    /// The Redis lock's fencing token, or `None` on the MySQL fallback path.
    pub fence: Option<u64>,
    pub now: DateTime<Utc>,
    pub currency: Currency,
    /// Points per unit paid.
    pub points_rate: rust_decimal::Decimal,
}

/// The result of a command inside its transaction.
pub enum Applied<T> {
    /// Something was written: commit.
    Written(T),
    /// The request had been applied before: roll back and replay this answer.
    Replay(T),
    /// A unique key says the request was applied before: roll back and answer what
    /// [`Command::recorded`] finds.
    Recorded,
}

/// A money movement with an idempotency key, run under the wallet's lock.
pub trait Command: Send + Sync {
    type Output: Serialize + DeserializeOwned + Send;

    /// Namespace of the idempotency key: `payment`, `top-up`, `cancel`, `hold`, …
    const SCOPE: &'static str;

    /// This request's namespace: [`Command::SCOPE`] unless one command type serves
    /// several kinds of request.
    fn scope(&self) -> &'static str {
        Self::SCOPE
    }

    fn key(&self) -> &Identifier;

    fn user_id(&self) -> &Identifier;

    /// What the request asked for; a repeat with another fingerprint is refused (422).
    fn fingerprint(&self) -> String;

    /// Applies the command; `wallet` is locked and its fencing token checked.
    fn apply(
        &self,
        conn: &mut MySqlConnection,
        wallet: &WalletRow,
        ctx: &TxContext,
    ) -> impl Future<Output = Result<Applied<Self::Output>, Failure>> + Send;

    /// The answer recorded by an earlier run, after [`Applied::Recorded`].
    fn recorded(
        &self,
        db: &MySqlPool,
        currency: Currency,
    ) -> impl Future<Output = Result<Outcome<Self::Output>, ServiceError>> + Send;
}

/// Credits the wallet once per top-up id.
pub struct TopUp {
    pub top_up_id: Identifier,
    pub user_id: Identifier,
    pub amount: Amount,
}

impl Command for TopUp {
    type Output = TopUpView;
    const SCOPE: &'static str = "top-up";

    fn key(&self) -> &Identifier {
        &self.top_up_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    fn fingerprint(&self) -> String {
        format!("{}|{}", self.user_id, self.amount)
    }

    async fn apply(
        &self,
        conn: &mut MySqlConnection,
        wallet: &WalletRow,
        ctx: &TxContext,
    ) -> Result<Applied<TopUpView>, Failure> {
        let amount = self.amount.value();
        let balance_after = wallet.balance + amount;
        let row = self.row(balance_after, ctx);
        // The insert comes first: a repeat of an applied top-up is a replay, whatever
        // the balance is now. Refusing after it rolls the insert back.
        if !store::inserted(top_ups::insert(conn, &row).await)? {
            return Ok(Applied::Recorded);
        }
        if balance_after > balance_limit() {
            return Err(ServiceError::BalanceLimit.into());
        }
        if !store::wallets::apply_delta(conn, &row.user_id, amount, ctx.fence, ctx.now).await? {
            return Err(Failure::conflict());
        }
        let entry = ledger::NewEntry::money(
            &row.user_id,
            ledger::EntryType::TopUp,
            amount,
            (balance_after, wallet.held),
            &row.top_up_id,
        );
        ledger::append(conn, entry, ctx.now).await?;
        Ok(Applied::Written(TopUpView::new(&row, ctx.currency)))
    }

    async fn recorded(
        &self,
        db: &MySqlPool,
        currency: Currency,
    ) -> Result<Outcome<TopUpView>, ServiceError> {
        let row = top_ups::find(db, self.top_up_id.as_str())
            .await
            .map_err(super::unavailable)?
            .ok_or_else(|| {
                super::unavailable(anyhow::anyhow!("top-up vanished after a duplicate key"))
            })?;
        replay::recorded(Self::SCOPE, self.matches(&row), || {
            TopUpView::new(&row, currency)
        })
    }
}

impl TopUp {
    /// The top-up's row, for a wallet whose balance it takes to `balance_after`.
    pub(super) fn row(&self, balance_after: Decimal, ctx: &TxContext) -> top_ups::TopUpRow {
        top_ups::TopUpRow {
            top_up_id: self.top_up_id.to_string(),
            user_id: self.user_id.to_string(),
            amount: self.amount.value(),
            currency: ctx.currency.code().to_owned(),
            balance_after,
            created_at: ctx.now,
        }
    }

    /// True when `row`, recorded under this top-up id, is this very request.
    pub(super) fn matches(&self, row: &top_ups::TopUpRow) -> bool {
        row.user_id == self.user_id.as_str() && row.amount.normalize() == self.amount.value()
    }
}

/// Debits the wallet once per order id.
pub struct Debit {
    pub order_id: Identifier,
    pub user_id: Identifier,
    pub amount: Amount,
}

impl Command for Debit {
    type Output = PaymentView;
    const SCOPE: &'static str = "payment";

    fn key(&self) -> &Identifier {
        &self.order_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    fn fingerprint(&self) -> String {
        format!("{}|{}", self.user_id, self.amount)
    }

    async fn apply(
        &self,
        conn: &mut MySqlConnection,
        wallet: &WalletRow,
        ctx: &TxContext,
    ) -> Result<Applied<PaymentView>, Failure> {
        let amount = self.amount.value();
        if wallet.balance - wallet.held < amount {
            // A repeat of a debit that succeeded earlier replays it, even though the
            // available balance no longer covers it.
            return match payments::lock(conn, self.order_id.as_str()).await? {
                Some(_) => Ok(Applied::Recorded),
                None => Err(ServiceError::InsufficientFunds.into()),
            };
        }
        let balance_after = wallet.balance - amount;
        let row = self.row(balance_after, ctx);
        if !store::inserted(payments::insert(conn, &row).await)? {
            return Ok(Applied::Recorded);
        }
        if !store::wallets::apply_delta(conn, &row.user_id, -amount, ctx.fence, ctx.now).await? {
            return Err(Failure::conflict());
        }
        let entry = ledger::NewEntry::money(
            &row.user_id,
            ledger::EntryType::Payment,
            -amount,
            (balance_after, wallet.held),
            &row.order_id,
        );
        ledger::append(conn, entry, ctx.now).await?;
        let event = payment_event(&row, PAYMENT_COMPLETED, ctx);
        outbox::append(conn, &event.into(), ctx.now).await?;
        Ok(Applied::Written(PaymentView::as_debited(
            &row,
            ctx.currency,
        )))
    }

    async fn recorded(
        &self,
        db: &MySqlPool,
        currency: Currency,
    ) -> Result<Outcome<PaymentView>, ServiceError> {
        let row = payments::find(db, self.order_id.as_str())
            .await
            .map_err(super::unavailable)?
            .ok_or_else(|| {
                super::unavailable(anyhow::anyhow!("payment vanished after a duplicate key"))
            })?;
        replay::recorded(Self::SCOPE, self.matches(&row), || {
            PaymentView::as_debited(&row, currency)
        })
    }
}

impl Debit {
    /// The payment's row, for a wallet whose balance it takes to `balance_after`.
    pub(super) fn row(&self, balance_after: Decimal, ctx: &TxContext) -> payments::PaymentRow {
        let amount = self.amount.value();
        payments::PaymentRow {
            payment_id: uuid::Uuid::now_v7().to_string(),
            order_id: self.order_id.to_string(),
            user_id: self.user_id.to_string(),
            amount,
            currency: ctx.currency.code().to_owned(),
            status: payments::PaymentStatus::Completed,
            balance_after,
            created_at: ctx.now,
            cancelled_at: None,
            cancel_reason: None,
            refund_balance_after: None,
            points: points_for(amount, ctx.points_rate),
        }
    }

    /// True when `row`, recorded under this order id, is this very request.
    pub(super) fn matches(&self, row: &payments::PaymentRow) -> bool {
        row.user_id == self.user_id.as_str() && row.amount.normalize() == self.amount.value()
    }
}

/// Cancels a completed payment and credits its amount back, once.
pub struct CancelPayment {
    pub order_id: Identifier,
    /// The payment's owner, read before the lock is taken.
    pub user_id: Identifier,
    pub reason: Option<String>,
}

impl Command for CancelPayment {
    type Output = PaymentView;
    const SCOPE: &'static str = "cancel";

    fn key(&self) -> &Identifier {
        &self.order_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    fn fingerprint(&self) -> String {
        // Any repeat of a cancel is the same cancel; the first reason stays.
        self.user_id.to_string()
    }

    async fn apply(
        &self,
        conn: &mut MySqlConnection,
        wallet: &WalletRow,
        ctx: &TxContext,
    ) -> Result<Applied<PaymentView>, Failure> {
        let mut payment = payments::lock(conn, self.order_id.as_str())
            .await?
            .ok_or(ServiceError::PaymentNotFound)?;
        if payment.status == payments::PaymentStatus::Cancelled {
            return Ok(Applied::Replay(PaymentView::current(
                &payment,
                ctx.currency,
            )));
        }
        let balance_after = wallet.balance + payment.amount;
        if balance_after > balance_capacity() {
            return Err(ServiceError::BalanceLimit.into());
        }
        if !payments::mark_cancelled(
            conn,
            &payment.order_id,
            self.reason.as_deref(),
            balance_after,
            ctx.now,
        )
        .await?
        {
            return Err(Failure::conflict());
        }
        if !store::wallets::apply_delta(conn, &payment.user_id, payment.amount, ctx.fence, ctx.now)
            .await?
        {
            return Err(Failure::conflict());
        }
        let entry = ledger::NewEntry::money(
            &payment.user_id,
            ledger::EntryType::Refund,
            payment.amount,
            (balance_after, wallet.held),
            &payment.order_id,
        );
        ledger::append(conn, entry, ctx.now).await?;
        let event = payment_event(&payment, PAYMENT_CANCELLED, ctx);
        outbox::append(conn, &event.into(), ctx.now).await?;
        payment.status = payments::PaymentStatus::Cancelled;
        payment.cancelled_at = Some(ctx.now);
        payment.cancel_reason = self.reason.clone();
        payment.refund_balance_after = Some(balance_after);
        Ok(Applied::Written(PaymentView::current(
            &payment,
            ctx.currency,
        )))
    }

    async fn recorded(
        &self,
        db: &MySqlPool,
        currency: Currency,
    ) -> Result<Outcome<PaymentView>, ServiceError> {
        let row = payments::find(db, self.order_id.as_str())
            .await
            .map_err(super::unavailable)?
            .ok_or(ServiceError::PaymentNotFound)?;
        replay::recorded(Self::SCOPE, true, || PaymentView::current(&row, currency))
    }
}

/// The outbox event of a payment that was just completed or cancelled.
pub(super) fn payment_event(
    payment: &payments::PaymentRow,
    event_type: &str,
    ctx: &TxContext,
) -> PaymentEvent {
    PaymentEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.to_owned(),
        order_id: payment.order_id.clone(),
        user_id: payment.user_id.clone(),
        payment_id: Some(payment.payment_id.clone()),
        amount: ctx.currency.format(payment.amount),
        currency: payment.currency.clone(),
        points: payment.points,
        reason: None,
        order_status: None,
        occurred_at: crate::support::clock::timestamp(ctx.now),
    }
}
