//! The refund rule: part or all of what remains of a payment given back, once per
//! refund id, never more than was paid. Points go back in proportion: after refunds of
//! `r` of a payment of `a` that earned `p` points, `⌊p·r/a⌋` have been taken back, so
//! the refunds of one payment never take back more than it earned, and all of it once
//! it is refunded in full.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::{after, balance_capacity, fresh, Answer, Book, Kind, Tracked};
use crate::domain::events::PAYMENT_REFUNDED;
use crate::store::ledger::{EntryType, NewEntry};
use crate::store::payments::PaymentStatus;
use crate::store::refunds::RefundRow;
use crate::wallet::replay;
use crate::wallet::requests::{payment_event, Keyed, Refund};
use crate::wallet::views::RefundView;
use crate::wallet::ServiceError;

impl Book {
    /// Gives back `amount` (all that remains when `None`) of a payment, once per refund
    /// id; refused, with nothing applied, when that is more than remains.
    pub fn refund(&mut self, refund: &Refund) -> Answer<RefundView> {
        let ctx = self.ctx;
        if let Some(recorded) = self.refunds.get(refund.refund_id.as_str()) {
            let same = recorded.row.order_id == refund.order_id.as_str();
            return replay::recorded(refund.scope(), same, || {
                RefundView::new(&recorded.row, ctx.currency)
            });
        }
        let payment = self
            .payments
            .get_mut(refund.order_id.as_str())
            .filter(|p| p.row.user_id == refund.user_id.as_str())
            .ok_or(ServiceError::PaymentNotFound)?;
        let remaining = payment.row.refundable();
        let amount = refund.amount.map_or(remaining, |a| a.value());
        if remaining.is_zero() || amount > remaining {
            return Err(ServiceError::RefundExceedsPayment);
        }
        let funds = after(&mut self.wallets, refund.user_id.as_str())?;
        let balance_after = funds.balance + amount;
        if balance_after > balance_capacity() {
            return Err(ServiceError::BalanceLimit);
        }
        funds.balance = balance_after;
        let row = &mut payment.row;
        row.refunded_amount += amount;
        if row.refunded_amount == row.amount {
            row.status = PaymentStatus::Refunded;
        }
        let points_back = points_taken_back(row.points, row.refunded_amount, row.amount)
            .saturating_sub(row.points_refunded);
        row.points_refunded += points_back;
        payment.changed = true;
        let made = RefundRow {
            refund_id: refund.refund_id.to_string(),
            order_id: row.order_id.clone(),
            user_id: row.user_id.clone(),
            amount,
            currency: ctx.currency.code().to_owned(),
            reason: refund.reason.clone(),
            points: points_back,
            refunded_total: row.refunded_amount,
            balance_after,
            created_at: ctx.now,
        };
        self.entries.push(NewEntry::money(
            &made.user_id,
            EntryType::PartialRefund,
            amount,
            (funds.balance, funds.held),
            &made.refund_id,
        ));
        let mut event = payment_event(row, PAYMENT_REFUNDED, &ctx);
        event.amount = ctx.currency.format(amount);
        event.points = points_back;
        event.reason = made.reason.clone();
        event.refund_id = Some(made.refund_id.clone());
        self.events.push(event.into());
        let value = RefundView::new(&made, ctx.currency);
        self.made.push((Kind::Refund, made.refund_id.clone()));
        self.refunds
            .insert(made.refund_id.clone(), Tracked::made(made));
        Ok(fresh(value))
    }
}

/// Points taken back once `refunded` of a payment of `amount` that earned `points` is
/// refunded: `⌊points · refunded / amount⌋`, at most `points`.
pub fn points_taken_back(points: i64, refunded: Decimal, amount: Decimal) -> i64 {
    if amount.is_zero() {
        return 0;
    }
    (Decimal::from(points) * refunded / amount)
        .floor()
        .to_i64()
        .unwrap_or(0)
        .clamp(0, points)
}
