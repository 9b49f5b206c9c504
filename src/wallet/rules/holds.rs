//! The hold rules: funds reserved now (`hold`), debited in full or in part (`capture`)
//! or released (`void`) later, or released at their deadline (`expire`).
//!
//! A hold changes the wallet's `held` sum, not its balance, until it is captured; the
//! available balance (`balance - held`) is what debits and new holds may take. A hold
//! is settled once: it changes only from `HELD`, and a request to settle a hold that is
//! settled already answers what settled it. The deadline decides between a late
//! capture (or void) and the expiry: a hold past its deadline expires in the very batch
//! that finds it so, whichever request that is.

use rust_decimal::Decimal;

use super::{after, fresh, Answer, Book, Kind, Tracked};
use crate::domain::events::{points_for, HOLD_CAPTURED, HOLD_CREATED, HOLD_EXPIRED, HOLD_VOIDED};
use crate::store::holds::{HoldRow, HoldStatus};
use crate::store::ledger::{EntryType, NewEntry};
use crate::store::payments::{PaymentRow, PaymentSource, PaymentStatus};
use crate::wallet::replay;
use crate::wallet::requests::{hold_event, Keyed, PlaceHold, SettleHold, Settlement};
use crate::wallet::views::HoldView;
use crate::wallet::ServiceError;

impl Book {
    /// Reserves funds once per hold id, if the available balance covers them.
    pub fn hold(&mut self, hold: &PlaceHold) -> Answer<HoldView> {
        let ctx = self.ctx;
        if let Some(recorded) = self.holds.get(hold.hold_id.as_str()) {
            return replay::recorded(hold.scope(), hold.matches(&recorded.row), || {
                HoldView::as_placed(&recorded.row, ctx.currency)
            });
        }
        if self.payments.contains_key(hold.hold_id.as_str()) {
            // The order is paid already: one charge per order.
            return Err(ServiceError::KeyReused);
        }
        let funds = after(&mut self.wallets, hold.user_id.as_str())?;
        let amount = hold.amount.value();
        if funds.available() < amount {
            return Err(ServiceError::InsufficientFunds);
        }
        funds.held += amount;
        let row = HoldRow {
            hold_id: hold.hold_id.to_string(),
            user_id: hold.user_id.to_string(),
            amount,
            currency: ctx.currency.code().to_owned(),
            status: HoldStatus::Held,
            captured_amount: None,
            points: 0,
            expires_at: ctx.now + hold.expires_in,
            created_at: ctx.now,
            balance_after: funds.balance,
            held_after: funds.held,
            settled_at: None,
            settled_balance_after: None,
            settled_held_after: None,
        };
        self.entries.push(NewEntry {
            user_id: row.user_id.clone(),
            entry_type: EntryType::Hold,
            amount: Decimal::ZERO,
            balance_after: funds.balance,
            held_delta: amount,
            held_after: funds.held,
            reference: row.hold_id.clone(),
        });
        self.events
            .push(hold_event(&row, HOLD_CREATED, &ctx).into());
        let value = HoldView::as_placed(&row, ctx.currency);
        self.made.push((Kind::Hold, row.hold_id.clone()));
        self.holds.insert(row.hold_id.clone(), Tracked::made(row));
        Ok(fresh(value))
    }

    /// Captures, voids or expires an open hold, once. A hold past its deadline
    /// expires, whatever was asked. The answer is the hold as the book leaves it;
    /// [`SettleHold::answer`] tells the caller whether that is what it asked for.
    pub fn settle(&mut self, settle: &SettleHold) -> Answer<HoldView> {
        let ctx = self.ctx;
        let funds = after(&mut self.wallets, settle.user_id.as_str())?;
        let hold = self
            .holds
            .get_mut(settle.hold_id.as_str())
            .filter(|h| h.row.user_id == settle.user_id.as_str())
            .ok_or(ServiceError::HoldNotFound)?;
        let row = &mut hold.row;
        if row.status != HoldStatus::Held {
            let value = HoldView::current(row, ctx.currency);
            return replay::recorded(settle.scope(), true, || value);
        }
        let expired = row.expires_at <= ctx.now;
        let (status, entry_type, event_type, captured) = match settle.how {
            _ if expired => (HoldStatus::Expired, EntryType::Expiry, HOLD_EXPIRED, None),
            // Not due yet (the sweeper read an old deadline): an error, so that no
            // answer is cached for its key and a later sweep expires it.
            Settlement::Expire => {
                let view = HoldView::current(row, ctx.currency);
                return Err(ServiceError::HoldNotOpen(Box::new(view)));
            }
            Settlement::Void => (HoldStatus::Voided, EntryType::Void, HOLD_VOIDED, None),
            Settlement::Capture(amount) => {
                let captured = amount.map_or(row.amount, |a| a.value());
                if captured > row.amount {
                    return Err(ServiceError::CaptureExceedsHold);
                }
                let captured = Some(captured);
                (
                    HoldStatus::Captured,
                    EntryType::Capture,
                    HOLD_CAPTURED,
                    captured,
                )
            }
        };
        let debited = captured.unwrap_or(Decimal::ZERO);
        // `held` covers the hold and `balance` covers `held`: the capture is covered.
        funds.balance -= debited;
        funds.held -= row.amount;
        row.status = status;
        row.captured_amount = captured;
        row.points = points_for(debited, ctx.points_rate);
        row.settled_at = Some(ctx.now);
        row.settled_balance_after = Some(funds.balance);
        row.settled_held_after = Some(funds.held);
        hold.changed = true;
        self.entries.push(NewEntry {
            user_id: row.user_id.clone(),
            entry_type,
            amount: -debited,
            balance_after: funds.balance,
            held_delta: -row.amount,
            held_after: funds.held,
            reference: row.hold_id.clone(),
        });
        self.events.push(hold_event(row, event_type, &ctx).into());
        let value = HoldView::current(row, ctx.currency);
        // A capture is the order's payment, refunded and cancelled like any other. (An
        // order id that a payment took before one charge per order was enforced keeps
        // that payment; the ledger audit reports it.)
        if let Some(captured) = captured {
            if !self.payments.contains_key(&row.hold_id) {
                let payment = PaymentRow {
                    payment_id: uuid::Uuid::now_v7().to_string(),
                    order_id: row.hold_id.clone(),
                    user_id: row.user_id.clone(),
                    amount: captured,
                    currency: row.currency.clone(),
                    status: PaymentStatus::Completed,
                    source: PaymentSource::Capture,
                    balance_after: funds.balance,
                    created_at: ctx.now,
                    cancelled_at: None,
                    cancel_reason: None,
                    refund_balance_after: None,
                    refunded_amount: Decimal::ZERO,
                    points: row.points,
                    points_refunded: 0,
                };
                self.made.push((Kind::Payment, payment.order_id.clone()));
                self.payments
                    .insert(payment.order_id.clone(), Tracked::made(payment));
            }
        }
        Ok(fresh(value))
    }
}
