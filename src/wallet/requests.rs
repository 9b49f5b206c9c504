//! The money movements a client may ask for, each keyed for idempotency, and the rows
//! and events they become. What each one does to a wallet is decided by
//! [`super::rules`]; the engine ([`super::engine`]) runs them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::views::{HoldView, RefundView};
use super::{Outcome, ServiceError};
use crate::domain::events::{points_for, HoldEvent, PaymentEvent};
use crate::domain::{Amount, Currency, Identifier};
use crate::idempotency::CacheKey;
use crate::store::holds::{HoldRow, HoldStatus};
use crate::store::{payments, top_ups};

/// What the rules need to know about the moment they run in.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: DateTime<Utc>,
    pub currency: Currency,
    /// Points per unit paid.
    pub points_rate: Decimal,
}

/// What the engine reads of every request: its idempotency key and its wallet.
pub trait Keyed: Send + Sync {
    /// Namespace of the idempotency key: `payment`, `top-up`, `cancel`, `hold`, …
    fn scope(&self) -> &'static str;

    fn key(&self) -> &Identifier;

    fn user_id(&self) -> &Identifier;

    /// The hash tag of the request's idempotency key: its wallet, so that the keys of a
    /// batch share one Redis Cluster slot with the wallet's lock and are claimed in one
    /// script call.
    fn cache_tag(&self) -> &Identifier {
        self.user_id()
    }

    /// What the request asked for; a repeat with another fingerprint is refused (422).
    fn fingerprint(&self) -> String;
}

/// Credits the wallet once per top-up id.
#[derive(Debug, Clone)]
pub struct TopUp {
    pub top_up_id: Identifier,
    pub user_id: Identifier,
    pub amount: Amount,
}

/// Debits the wallet once per order id.
#[derive(Debug, Clone)]
pub struct Debit {
    pub order_id: Identifier,
    pub user_id: Identifier,
    pub amount: Amount,
}

/// Cancels a completed payment and credits its amount back, once.
#[derive(Debug, Clone)]
pub struct CancelPayment {
    pub order_id: Identifier,
    /// The payment's owner, read before the lock is taken (it never changes).
    pub user_id: Identifier,
    pub reason: Option<String>,
}

/// Gives back part or all of what remains of a payment, once per refund id.
#[derive(Debug, Clone)]
pub struct Refund {
    pub refund_id: Identifier,
    pub order_id: Identifier,
    /// The payment's owner, read before the lock is taken (it never changes).
    pub user_id: Identifier,
    /// All that remains when `None`.
    pub amount: Option<Amount>,
    pub reason: Option<String>,
}

/// Reserves `amount` of the wallet's available balance until `expires_in` has passed.
#[derive(Debug, Clone)]
pub struct PlaceHold {
    pub hold_id: Identifier,
    pub user_id: Identifier,
    pub amount: Amount,
    /// Within the configured maximum; the default applied already.
    pub expires_in: chrono::Duration,
}

/// How an open hold is settled.
#[derive(Debug, Clone, Copy)]
pub enum Settlement {
    /// Debit this much (the whole hold when `None`), release the rest.
    Capture(Option<Amount>),
    Void,
    /// Release it because its deadline passed (the sweeper).
    Expire,
}

/// Settles a hold: capture, void or expire.
#[derive(Debug, Clone)]
pub struct SettleHold {
    pub hold_id: Identifier,
    /// The hold's owner, read before the lock is taken (it never changes).
    pub user_id: Identifier,
    pub how: Settlement,
}

impl Keyed for TopUp {
    fn scope(&self) -> &'static str {
        "top-up"
    }

    fn key(&self) -> &Identifier {
        &self.top_up_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    fn fingerprint(&self) -> String {
        format!("{}|{}", self.user_id, self.amount)
    }
}

impl Keyed for Debit {
    fn scope(&self) -> &'static str {
        "payment"
    }

    fn key(&self) -> &Identifier {
        &self.order_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    fn fingerprint(&self) -> String {
        format!("{}|{}", self.user_id, self.amount)
    }
}

impl Keyed for CancelPayment {
    fn scope(&self) -> &'static str {
        "cancel"
    }

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
}

impl Keyed for Refund {
    fn scope(&self) -> &'static str {
        "refund"
    }

    fn key(&self) -> &Identifier {
        &self.refund_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    /// The order only: a repeat with another amount gets its answer from
    /// [`Refund::answer`], which compares it with what was refunded, whether the first
    /// answer comes from the cache or from MySQL (a refund of "all that remains" has no
    /// amount to fingerprint before it runs).
    fn fingerprint(&self) -> String {
        self.order_id.to_string()
    }
}

impl Keyed for PlaceHold {
    fn scope(&self) -> &'static str {
        "hold"
    }

    fn key(&self) -> &Identifier {
        &self.hold_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    /// The hold's own id: a capture or void sent by event names only the hold, and
    /// looks for its placement's claim while the hold is not recorded yet
    /// (`Refusals::placement_in_flight`).
    fn cache_tag(&self) -> &Identifier {
        &self.hold_id
    }

    fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}",
            self.user_id,
            self.amount,
            self.expires_in.num_seconds()
        )
    }
}

impl Keyed for SettleHold {
    /// Each kind of settlement has a scope of its own.
    fn scope(&self) -> &'static str {
        match self.how {
            Settlement::Capture(_) => "capture",
            Settlement::Void => "void",
            Settlement::Expire => "expire",
        }
    }

    fn key(&self) -> &Identifier {
        &self.hold_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    /// The kind only: a capture repeated with another amount gets its answer from
    /// [`SettleHold::answer`], which compares it with what was captured, whether the
    /// first answer comes from the cache or from MySQL.
    fn fingerprint(&self) -> String {
        self.scope().to_owned()
    }
}

impl PlaceHold {
    /// The cache entry of the placement of `hold_id`, which names it alone
    /// ([`Keyed::cache_tag`]).
    pub fn placement_key(hold_id: &Identifier) -> CacheKey<'_> {
        CacheKey {
            tag: hold_id,
            scope: "hold",
            id: hold_id,
        }
    }
}

impl TopUp {
    /// The top-up's row, for a wallet whose balance it takes to `balance_after`.
    pub(super) fn row(&self, balance_after: Decimal, ctx: &Context) -> top_ups::TopUpRow {
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

impl Debit {
    /// The payment's row, for a wallet whose balance it takes to `balance_after`.
    pub(super) fn row(&self, balance_after: Decimal, ctx: &Context) -> payments::PaymentRow {
        let amount = self.amount.value();
        payments::PaymentRow {
            payment_id: uuid::Uuid::now_v7().to_string(),
            order_id: self.order_id.to_string(),
            user_id: self.user_id.to_string(),
            amount,
            currency: ctx.currency.code().to_owned(),
            status: payments::PaymentStatus::Completed,
            source: payments::PaymentSource::Debit,
            balance_after,
            created_at: ctx.now,
            cancelled_at: None,
            cancel_reason: None,
            refund_balance_after: None,
            refunded_amount: Decimal::ZERO,
            points: points_for(amount, ctx.points_rate),
            points_refunded: 0,
        }
    }

    /// True when `row`, recorded under this order id, is this very request.
    pub(super) fn matches(&self, row: &payments::PaymentRow) -> bool {
        row.user_id == self.user_id.as_str() && row.amount.normalize() == self.amount.value()
    }
}

impl Refund {
    /// The answer to this request, given the refund recorded under its id: a repeat
    /// that names another amount than the one refunded is a reused key.
    pub fn answer(
        &self,
        outcome: Outcome<RefundView>,
    ) -> Result<Outcome<RefundView>, ServiceError> {
        let refunded = outcome.value.amount.parse::<Decimal>().ok();
        match self.amount {
            Some(asked) if refunded.map(|d| d.normalize()) != Some(asked.value()) => {
                Err(ServiceError::KeyReused)
            }
            _ => Ok(outcome),
        }
    }
}

impl PlaceHold {
    /// True when `row`, recorded under this hold id, is this very request.
    pub(super) fn matches(&self, row: &HoldRow) -> bool {
        row.user_id == self.user_id.as_str()
            && row.amount.normalize() == self.amount.value()
            && row.expires_at - row.created_at == self.expires_in
    }
}

impl SettleHold {
    /// The answer to this request, given the hold as it left it: a capture or void
    /// answers the hold in that state, or 409 with the hold when something else settled
    /// it; a capture repeated with another amount is a reused key.
    pub fn answer(&self, outcome: Outcome<HoldView>) -> Result<Outcome<HoldView>, ServiceError> {
        let view = &outcome.value;
        let wanted = match self.how {
            Settlement::Capture(_) => HoldStatus::Captured,
            Settlement::Void => HoldStatus::Voided,
            Settlement::Expire => HoldStatus::Expired,
        };
        if view.status != wanted {
            return Err(ServiceError::HoldNotOpen(Box::new(outcome.value)));
        }
        if let Settlement::Capture(amount) = self.how {
            let decimal = |text: &str| text.parse::<Decimal>().ok().map(|d| d.normalize());
            let asked = amount.map_or_else(|| decimal(&view.amount), |a| Some(a.value()));
            if view.captured_amount.as_deref().and_then(decimal) != asked {
                return Err(ServiceError::KeyReused);
            }
        }
        Ok(outcome)
    }
}

/// The outbox event of a payment that was just completed or cancelled.
pub(super) fn payment_event(
    payment: &payments::PaymentRow,
    event_type: &str,
    ctx: &Context,
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
        refund_id: None,
        occurred_at: crate::support::clock::timestamp(ctx.now),
    }
}

/// The event of a hold that was just placed or settled.
pub(super) fn hold_event(hold: &HoldRow, event_type: &str, ctx: &Context) -> HoldEvent {
    HoldEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.to_owned(),
        hold_id: hold.hold_id.clone(),
        user_id: hold.user_id.clone(),
        amount: ctx.currency.format(hold.amount),
        captured_amount: hold.captured_amount.map(|a| ctx.currency.format(a)),
        currency: hold.currency.clone(),
        points: hold.points,
        status: None,
        reason: None,
        occurred_at: crate::support::clock::timestamp(ctx.now),
    }
}
