//! The money rules: what each movement does to a wallet, decided in memory over the
//! state a batch read — its wallets' balances and sums held, and the payments, top-ups
//! and holds recorded under its keys. No I/O: the engine reads that state, asks these
//! rules command by command, and writes what they decided ([`Book::writes`]) in one
//! transaction, whose conditions re-check what the rules assumed.
//!
//! Each rule either changes the book and answers, or refuses and leaves the book as it
//! was; a key the book has a record of is answered from that record (a replay), or
//! refused when the record is of another request.

mod holds;
mod refunds;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::replay;
use super::requests::{payment_event, CancelPayment, Context, Debit, Keyed, TopUp};
use super::views::{PaymentView, TopUpView};
use super::{Outcome, ServiceError};
use crate::domain::events::{Event, PAYMENT_CANCELLED, PAYMENT_COMPLETED};
use crate::store::holds::HoldRow;
use crate::store::ledger::{EntryType, NewEntry};
use crate::store::orders::OrderKind;
use crate::store::payments::{PaymentRow, PaymentSource, PaymentStatus};
use crate::store::refunds::RefundRow;
use crate::store::top_ups::TopUpRow;
use crate::store::wallets::WalletRow;

/// A rule's answer to one request.
pub type Answer<T> = Result<Outcome<T>, ServiceError>;

/// The largest balance a top-up may bring a wallet to.
pub fn balance_limit() -> Decimal {
    Decimal::from(100_000_000_000_000_u64)
}

/// The largest balance the column holds (`DECIMAL(19, 4)`). A refund gives back what
/// was paid, so it may take a wallet past [`balance_limit`], but never past this.
pub fn balance_capacity() -> Decimal {
    Decimal::from_i128_with_scale(9_999_999_999_999_999_999, 4)
}

/// A wallet's balance and the sum of its open holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funds {
    pub balance: Decimal,
    pub held: Decimal,
}

impl Funds {
    pub fn of(wallet: &WalletRow) -> Self {
        Self {
            balance: wallet.balance,
            held: wallet.held,
        }
    }

    /// What a debit or a new hold may take.
    pub fn available(&self) -> Decimal {
        self.balance - self.held
    }

    /// As a lock holder notes them for the next holder: `balance:held`.
    pub fn note(&self) -> String {
        format!("{}:{}", self.balance, self.held)
    }

    /// Funds from [`Funds::note`]; `None` for anything else.
    pub fn from_note(note: &str) -> Option<Self> {
        let (balance, held) = note.split_once(':')?;
        Some(Self {
            balance: balance.parse().ok()?,
            held: held.parse().ok()?,
        })
    }
}

/// A record the book knows: read before it, or made by it.
#[derive(Debug, Clone)]
struct Tracked<T> {
    row: T,
    /// Made by this book: inserted as it ends up.
    new: bool,
    /// Changed by this book (cancelled, settled).
    changed: bool,
}

impl<T> Tracked<T> {
    fn read(row: T) -> Self {
        Self {
            row,
            new: false,
            changed: false,
        }
    }

    fn made(row: T) -> Self {
        Self {
            row,
            new: true,
            changed: false,
        }
    }
}

/// The records a batch read under its keys: the payments and holds of its order ids
/// (a payment's key and a hold's are both order ids: one charge per order), its
/// top-ups and refunds.
#[derive(Debug, Default)]
pub struct Records {
    pub payments: Vec<PaymentRow>,
    pub top_ups: Vec<TopUpRow>,
    pub holds: Vec<HoldRow>,
    pub refunds: Vec<RefundRow>,
}

/// The state one batch decides over, and what it has decided so far.
#[derive(Debug, Clone)]
pub struct Book {
    ctx: Context,
    /// Each wallet's funds as read and as the book leaves them.
    wallets: HashMap<String, (Funds, Funds)>,
    payments: HashMap<String, Tracked<PaymentRow>>,
    /// Each payment read, as it was read (status, refunded amount): the condition of
    /// its update.
    payments_read: HashMap<String, (PaymentStatus, Decimal)>,
    top_ups: HashMap<String, Tracked<TopUpRow>>,
    holds: HashMap<String, Tracked<HoldRow>>,
    refunds: HashMap<String, Tracked<RefundRow>>,
    /// The keys of the records made, in the order they were made.
    made: Vec<(Kind, String)>,
    entries: Vec<NewEntry>,
    events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Payment,
    TopUp,
    Hold,
    Refund,
}

/// What a book decided, for the transaction to write.
pub struct Writes<'a> {
    /// Every wallet whose funds changed: its funds before, and the net change.
    pub deltas: Vec<(&'a str, Funds, Funds)>,
    pub new_payments: Vec<&'a PaymentRow>,
    /// Payments read before and changed (refunded, cancelled), each with its status and
    /// refunded amount as read.
    pub changed_payments: Vec<(&'a PaymentRow, PaymentStatus, Decimal)>,
    pub new_refunds: Vec<&'a RefundRow>,
    /// The orders charged for the first time, by a payment or a hold.
    pub new_orders: Vec<(&'a str, &'a str, OrderKind)>,
    pub new_top_ups: Vec<&'a TopUpRow>,
    /// Holds placed by the book, as it leaves them.
    pub new_holds: Vec<&'a HoldRow>,
    /// Holds read open, now settled.
    pub settled: Vec<&'a HoldRow>,
    pub entries: &'a [NewEntry],
    pub events: &'a [Event],
}

impl Book {
    /// A book over the wallets and records a batch read.
    #[cfg(test)]
    pub fn new(ctx: Context, wallets: Vec<WalletRow>, records: Records) -> Self {
        let wallets = wallets
            .into_iter()
            .map(|row| {
                let funds = Funds::of(&row);
                (row.user_id, funds)
            })
            .collect();
        Self::over(ctx, wallets, records)
    }

    /// A book over wallets' funds, read or noted by their last holder, and the records a batch read.
    pub fn over(ctx: Context, wallets: Vec<(String, Funds)>, records: Records) -> Self {
        let Records {
            payments,
            top_ups,
            holds,
            refunds,
        } = records;
        Self {
            ctx,
            wallets: wallets
                .into_iter()
                .map(|(user_id, funds)| (user_id, (funds, funds)))
                .collect(),
            payments_read: payments
                .iter()
                .map(|p| (p.order_id.clone(), (p.status, p.refunded_amount)))
                .collect(),
            payments: payments
                .into_iter()
                .map(|p| (p.order_id.clone(), Tracked::read(p)))
                .collect(),
            refunds: refunds
                .into_iter()
                .map(|r| (r.refund_id.clone(), Tracked::read(r)))
                .collect(),
            top_ups: top_ups
                .into_iter()
                .map(|t| (t.top_up_id.clone(), Tracked::read(t)))
                .collect(),
            holds: holds
                .into_iter()
                .map(|h| (h.hold_id.clone(), Tracked::read(h)))
                .collect(),
            made: Vec::new(),
            entries: Vec::new(),
            events: Vec::new(),
        }
    }

    /// True when nothing was decided that must be written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every wallet's funds as the book leaves them.
    pub fn funds_after(&self) -> impl Iterator<Item = (&str, Funds)> {
        self.wallets
            .iter()
            .map(|(user_id, (_, after))| (user_id.as_str(), *after))
    }

    /// The funds of `user_id` as the book leaves them, if it read that wallet.
    #[cfg(test)]
    pub fn funds(&self, user_id: &str) -> Option<Funds> {
        self.wallets.get(user_id).map(|(_, after)| *after)
    }

    #[cfg(test)]
    pub fn entries(&self) -> &[NewEntry] {
        &self.entries
    }

    #[cfg(test)]
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// What the book decided, for the transaction to write.
    pub fn writes(&self) -> Writes<'_> {
        let mut deltas: Vec<(&str, Funds, Funds)> = self
            .wallets
            .iter()
            .filter(|(_, (before, after))| before != after)
            .map(|(user_id, (before, after))| {
                let change = Funds {
                    balance: after.balance - before.balance,
                    held: after.held - before.held,
                };
                (user_id.as_str(), *before, change)
            })
            .collect();
        deltas.sort_unstable_by_key(|(user_id, _, _)| *user_id);
        let made = |kind: Kind| {
            self.made
                .iter()
                .filter(move |(k, _)| *k == kind)
                .map(|(_, key)| key.as_str())
        };
        let mut changed_payments: Vec<(&PaymentRow, PaymentStatus, Decimal)> = self
            .payments
            .values()
            .filter(|p| p.changed && !p.new)
            .map(|p| {
                let (status, refunded) = self.payments_read[&p.row.order_id];
                (&p.row, status, refunded)
            })
            .collect();
        changed_payments.sort_unstable_by(|a, b| a.0.order_id.cmp(&b.0.order_id));
        let new_orders = self
            .made
            .iter()
            .filter_map(|(kind, key)| match kind {
                Kind::Payment => {
                    let row = &self.payments[key].row;
                    (row.source == PaymentSource::Debit).then_some((
                        row.order_id.as_str(),
                        row.user_id.as_str(),
                        OrderKind::Payment,
                    ))
                }
                Kind::Hold => {
                    let row = &self.holds[key].row;
                    Some((row.hold_id.as_str(), row.user_id.as_str(), OrderKind::Hold))
                }
                Kind::TopUp | Kind::Refund => None,
            })
            .collect();
        let mut settled: Vec<&HoldRow> = self
            .holds
            .values()
            .filter(|h| h.changed && !h.new)
            .map(|h| &h.row)
            .collect();
        settled.sort_unstable_by(|a, b| a.hold_id.cmp(&b.hold_id));
        Writes {
            deltas,
            new_payments: made(Kind::Payment).map(|k| &self.payments[k].row).collect(),
            changed_payments,
            new_refunds: made(Kind::Refund).map(|k| &self.refunds[k].row).collect(),
            new_orders,
            new_top_ups: made(Kind::TopUp).map(|k| &self.top_ups[k].row).collect(),
            new_holds: made(Kind::Hold).map(|k| &self.holds[k].row).collect(),
            settled,
            entries: &self.entries,
            events: &self.events,
        }
    }

    /// Debits the wallet once per order id, if its available balance covers it.
    pub fn debit(&mut self, debit: &Debit) -> Answer<PaymentView> {
        let ctx = self.ctx;
        if self.holds.contains_key(debit.order_id.as_str()) {
            // The order is charged by a hold (and its capture, if any).
            return Err(ServiceError::KeyReused);
        }
        if let Some(recorded) = self.payments.get(debit.order_id.as_str()) {
            return replay::recorded(debit.scope(), debit.matches(&recorded.row), || {
                PaymentView::as_debited(&recorded.row, ctx.currency)
            });
        }
        let funds = after(&mut self.wallets, debit.user_id.as_str())?;
        let amount = debit.amount.value();
        if funds.available() < amount {
            return Err(ServiceError::InsufficientFunds);
        }
        funds.balance -= amount;
        let row = debit.row(funds.balance, &ctx);
        self.entries.push(NewEntry::money(
            &row.user_id,
            EntryType::Payment,
            -amount,
            (funds.balance, funds.held),
            &row.order_id,
        ));
        self.events
            .push(payment_event(&row, PAYMENT_COMPLETED, &ctx).into());
        let value = PaymentView::as_debited(&row, ctx.currency);
        self.made.push((Kind::Payment, row.order_id.clone()));
        self.payments
            .insert(row.order_id.clone(), Tracked::made(row));
        Ok(fresh(value))
    }

    /// Credits the wallet once per top-up id, up to [`balance_limit`].
    pub fn top_up(&mut self, top_up: &TopUp) -> Answer<TopUpView> {
        let ctx = self.ctx;
        if let Some(recorded) = self.top_ups.get(top_up.top_up_id.as_str()) {
            return replay::recorded(top_up.scope(), top_up.matches(&recorded.row), || {
                TopUpView::new(&recorded.row, ctx.currency)
            });
        }
        let funds = after(&mut self.wallets, top_up.user_id.as_str())?;
        let amount = top_up.amount.value();
        if funds.balance + amount > balance_limit() {
            return Err(ServiceError::BalanceLimit);
        }
        funds.balance += amount;
        let row = top_up.row(funds.balance, &ctx);
        self.entries.push(NewEntry::money(
            &row.user_id,
            EntryType::TopUp,
            amount,
            (funds.balance, funds.held),
            &row.top_up_id,
        ));
        let value = TopUpView::new(&row, ctx.currency);
        self.made.push((Kind::TopUp, row.top_up_id.clone()));
        self.top_ups
            .insert(row.top_up_id.clone(), Tracked::made(row));
        Ok(fresh(value))
    }

    /// Cancels a payment and credits back what remains of it (all of it unless refunds
    /// came first), once; a cancelled or fully refunded one answers as it is.
    pub fn cancel(&mut self, cancel: &CancelPayment) -> Answer<PaymentView> {
        let ctx = self.ctx;
        let payment = self
            .payments
            .get_mut(cancel.order_id.as_str())
            .filter(|p| p.row.user_id == cancel.user_id.as_str())
            .ok_or(ServiceError::PaymentNotFound)?;
        if payment.row.status != PaymentStatus::Completed {
            let value = PaymentView::current(&payment.row, ctx.currency);
            return replay::recorded(cancel.scope(), true, || value);
        }
        let funds = after(&mut self.wallets, cancel.user_id.as_str())?;
        let remaining = payment.row.refundable();
        let balance_after = funds.balance + remaining;
        if balance_after > balance_capacity() {
            return Err(ServiceError::BalanceLimit);
        }
        funds.balance = balance_after;
        let row = &mut payment.row;
        let points_back = row.points - row.points_refunded;
        row.status = PaymentStatus::Cancelled;
        row.cancelled_at = Some(ctx.now);
        row.cancel_reason = cancel.reason.clone();
        row.refund_balance_after = Some(balance_after);
        row.refunded_amount = row.amount;
        row.points_refunded = row.points;
        payment.changed = true;
        self.entries.push(NewEntry::money(
            &row.user_id,
            EntryType::Refund,
            remaining,
            (funds.balance, funds.held),
            &row.order_id,
        ));
        let mut event = payment_event(row, PAYMENT_CANCELLED, &ctx);
        event.amount = ctx.currency.format(remaining);
        event.points = points_back;
        self.events.push(event.into());
        Ok(fresh(PaymentView::current(row, ctx.currency)))
    }
}

/// A first answer.
fn fresh<T>(value: T) -> Outcome<T> {
    Outcome {
        value,
        replayed: false,
    }
}

/// The funds of the wallet `user_id` as the book has left them so far.
fn after<'a>(
    wallets: &'a mut HashMap<String, (Funds, Funds)>,
    user_id: &str,
) -> Result<&'a mut Funds, ServiceError> {
    wallets
        .get_mut(user_id)
        .map(|(_, after)| after)
        .ok_or(ServiceError::WalletNotFound)
}
