//! Holds: funds reserved now (`hold`), debited in full or in part (`capture`) or
//! released (`void`) later, or released at their deadline (`expire`).
//!
//! A hold changes the wallet's `held` sum, not its balance, until it is captured; the
//! wallet's available balance (`balance - held`) is what debits and new holds may take.
//! Each change is a ledger entry and an outbox event, written in the transaction that
//! makes it, under the same wallet lock, fencing and group commit as a debit.
//!
//! A hold is settled once: its row changes only from `HELD`, under its wallet's lock,
//! and a request to settle a hold that is settled already answers what settled it.
//! The deadline decides between a late capture (or void) and the expiry: a hold past
//! its deadline expires in the very transaction that finds it so, whichever request
//! that is.

use rust_decimal::Decimal;
use sqlx::{MySqlConnection, MySqlPool};

mod service;

pub use service::{sweep, HoldRefusal};

use super::attempt::Failure;
use super::commands::{Applied, Command, TxContext};
use super::replay;
use super::views::HoldView;
use super::{unavailable, Outcome, ServiceError};
use crate::domain::events::{
    points_for, HoldEvent, HOLD_CAPTURED, HOLD_CREATED, HOLD_EXPIRED, HOLD_VOIDED,
};
use crate::domain::{Amount, Currency, Identifier};
use crate::store::holds::{self, HoldRow, HoldStatus};
use crate::store::ledger::{EntryType, NewEntry};
use crate::store::wallets::{self, WalletRow};

/// A wallet's balance and the sum of its open holds, as a transaction moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Funds {
    pub balance: Decimal,
    pub held: Decimal,
}

impl Funds {
    pub(super) fn of(wallet: &WalletRow) -> Self {
        Self {
            balance: wallet.balance,
            held: wallet.held,
        }
    }

    /// What a debit or a new hold may take.
    pub(super) fn available(&self) -> Decimal {
        self.balance - self.held
    }
}

/// Reserves `amount` of the wallet's available balance until `expires_in` has passed.
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
#[derive(Clone)]
pub struct SettleHold {
    pub hold_id: Identifier,
    /// The hold's owner, read before the lock is taken (it never changes).
    pub user_id: Identifier,
    pub how: Settlement,
}

/// What one settle request did to its hold. Short-lived, one per request: its size
/// does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Settled {
    /// The hold changed: book the entry and publish the event.
    Written(NewEntry, HoldEvent),
    /// It was settled before (by this request or another): nothing to write.
    Already,
}

impl PlaceHold {
    /// The new hold, its entry and event, taking `funds` to what they become; refused
    /// when the available balance does not cover it.
    pub(super) fn place(
        &self,
        funds: &mut Funds,
        ctx: &TxContext,
    ) -> Result<(HoldRow, NewEntry, HoldEvent), ServiceError> {
        let amount = self.amount.value();
        if funds.available() < amount {
            return Err(ServiceError::InsufficientFunds);
        }
        funds.held += amount;
        let row = HoldRow {
            hold_id: self.hold_id.to_string(),
            user_id: self.user_id.to_string(),
            amount,
            currency: ctx.currency.code().to_owned(),
            status: HoldStatus::Held,
            captured_amount: None,
            points: 0,
            expires_at: ctx.now + self.expires_in,
            created_at: ctx.now,
            balance_after: funds.balance,
            held_after: funds.held,
            settled_at: None,
            settled_balance_after: None,
            settled_held_after: None,
        };
        let entry = NewEntry {
            user_id: row.user_id.clone(),
            entry_type: EntryType::Hold,
            amount: Decimal::ZERO,
            balance_after: funds.balance,
            held_delta: amount,
            held_after: funds.held,
            reference: row.hold_id.clone(),
        };
        let event = hold_event(&row, HOLD_CREATED, ctx);
        Ok((row, entry, event))
    }

    /// True when `row`, recorded under this hold id, is this very request.
    pub(super) fn matches(&self, row: &HoldRow) -> bool {
        row.user_id == self.user_id.as_str()
            && row.amount.normalize() == self.amount.value()
            && row.expires_at - row.created_at == self.expires_in
    }
}

impl SettleHold {
    /// Settles `hold` as asked, taking `funds` to what they become. A hold past its
    /// deadline expires, whatever was asked.
    pub(super) fn settle(
        &self,
        hold: &mut HoldRow,
        funds: &mut Funds,
        ctx: &TxContext,
    ) -> Result<Settled, ServiceError> {
        if hold.status != HoldStatus::Held {
            return Ok(Settled::Already);
        }
        let expired = hold.expires_at <= ctx.now;
        let (status, entry_type, event_type, captured) = match self.how {
            _ if expired => (HoldStatus::Expired, EntryType::Expiry, HOLD_EXPIRED, None),
            // Not due yet (the sweeper read an old deadline): nothing to do.
            Settlement::Expire => return Ok(Settled::Already),
            Settlement::Void => (HoldStatus::Voided, EntryType::Void, HOLD_VOIDED, None),
            Settlement::Capture(amount) => {
                let captured = amount.map_or(hold.amount, |a| a.value());
                if captured > hold.amount {
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
        funds.held -= hold.amount;
        hold.status = status;
        hold.captured_amount = captured;
        hold.points = points_for(debited, ctx.points_rate);
        hold.settled_at = Some(ctx.now);
        hold.settled_balance_after = Some(funds.balance);
        hold.settled_held_after = Some(funds.held);
        let entry = NewEntry {
            user_id: hold.user_id.clone(),
            entry_type,
            amount: -debited,
            balance_after: funds.balance,
            held_delta: -hold.amount,
            held_after: funds.held,
            reference: hold.hold_id.clone(),
        };
        Ok(Settled::Written(entry, hold_event(hold, event_type, ctx)))
    }

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

/// The event of a hold that was just placed or settled.
pub(super) fn hold_event(hold: &HoldRow, event_type: &str, ctx: &TxContext) -> HoldEvent {
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

/// Books one hold change on the single-request path: the wallet's funds, the entry,
/// the event.
async fn book(
    conn: &mut MySqlConnection,
    wallet: &WalletRow,
    funds: Funds,
    entry: NewEntry,
    event: HoldEvent,
    ctx: &TxContext,
) -> Result<(), Failure> {
    let delta = wallets::Delta {
        user_id: &wallet.user_id,
        amount: funds.balance - wallet.balance,
        held: funds.held - wallet.held,
        fence: ctx.fence,
    };
    if !wallets::apply_deltas(conn, &[delta], ctx.now).await? {
        return Err(Failure::conflict());
    }
    crate::store::ledger::append(conn, entry, ctx.now).await?;
    crate::outbox::append(conn, &event.into(), ctx.now).await?;
    Ok(())
}

/// The hold `hold_id` as committed, for the answer recorded under its key.
async fn recorded_hold(
    db: &MySqlPool,
    hold_id: &Identifier,
) -> Result<Option<HoldRow>, ServiceError> {
    holds::find(db, hold_id.as_str()).await.map_err(unavailable)
}

/// The hold `hold_id`, read inside the transaction that holds its wallet's lock.
async fn locked_hold(
    conn: &mut MySqlConnection,
    hold_id: &Identifier,
) -> Result<Option<HoldRow>, sqlx::Error> {
    Ok(holds::find_many(conn, &[hold_id.as_str()]).await?.pop())
}

impl Command for PlaceHold {
    type Output = HoldView;
    const SCOPE: &'static str = "hold";

    fn key(&self) -> &Identifier {
        &self.hold_id
    }

    fn user_id(&self) -> &Identifier {
        &self.user_id
    }

    fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}",
            self.user_id,
            self.amount,
            self.expires_in.num_seconds()
        )
    }

    async fn apply(
        &self,
        conn: &mut MySqlConnection,
        wallet: &WalletRow,
        ctx: &TxContext,
    ) -> Result<Applied<HoldView>, Failure> {
        if locked_hold(conn, &self.hold_id).await?.is_some() {
            return Ok(Applied::Recorded);
        }
        let mut funds = Funds::of(wallet);
        let (row, entry, event) = self.place(&mut funds, ctx)?;
        if !crate::store::inserted(holds::insert_many(conn, &[&row]).await)? {
            return Ok(Applied::Recorded);
        }
        book(conn, wallet, funds, entry, event, ctx).await?;
        Ok(Applied::Written(HoldView::as_placed(&row, ctx.currency)))
    }

    async fn recorded(
        &self,
        db: &MySqlPool,
        currency: Currency,
    ) -> Result<Outcome<HoldView>, ServiceError> {
        // Recorded means found under the key: a hold that vanished is a fault.
        let row = recorded_hold(db, &self.hold_id)
            .await?
            .ok_or_else(|| unavailable(anyhow::anyhow!("hold vanished after a duplicate key")))?;
        replay::recorded(Self::SCOPE, self.matches(&row), || {
            HoldView::as_placed(&row, currency)
        })
    }
}

impl Command for SettleHold {
    type Output = HoldView;
    /// Each kind of settlement has a scope of its own ([`Command::scope`]).
    const SCOPE: &'static str = "settle";

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

    async fn apply(
        &self,
        conn: &mut MySqlConnection,
        wallet: &WalletRow,
        ctx: &TxContext,
    ) -> Result<Applied<HoldView>, Failure> {
        let mut hold = locked_hold(conn, &self.hold_id)
            .await?
            .filter(|hold| hold.user_id == wallet.user_id)
            .ok_or(ServiceError::HoldNotFound)?;
        let mut funds = Funds::of(wallet);
        match self.settle(&mut hold, &mut funds, ctx)? {
            // An expiry of a hold not yet due (the sweeper's clock ran ahead): an error,
            // so that no answer is cached for its key and a later sweep expires it.
            Settled::Already if hold.status == HoldStatus::Held => {
                let view = HoldView::current(&hold, ctx.currency);
                Err(ServiceError::HoldNotOpen(Box::new(view)).into())
            }
            Settled::Already => Ok(Applied::Replay(HoldView::current(&hold, ctx.currency))),
            Settled::Written(entry, event) => {
                if !holds::settle_many(conn, &[&hold]).await? {
                    return Err(Failure::conflict());
                }
                book(conn, wallet, funds, entry, event, ctx).await?;
                Ok(Applied::Written(HoldView::current(&hold, ctx.currency)))
            }
        }
    }

    async fn recorded(
        &self,
        db: &MySqlPool,
        currency: Currency,
    ) -> Result<Outcome<HoldView>, ServiceError> {
        let row = recorded_hold(db, &self.hold_id)
            .await?
            .ok_or(ServiceError::HoldNotFound)?;
        replay::recorded(self.scope(), true, || HoldView::current(&row, currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RawAmount;

    fn ctx(now: chrono::DateTime<chrono::Utc>) -> TxContext {
        TxContext {
            fence: None,
            now,
            currency: Currency::KRW,
            points_rate: Decimal::new(1, 2),
        }
    }

    fn amount(value: i64) -> Amount {
        Amount::parse("amount", RawAmount(Decimal::from(value)), Currency::KRW).unwrap()
    }

    fn placed(funds: &mut Funds, now: chrono::DateTime<chrono::Utc>) -> HoldRow {
        let hold = PlaceHold {
            hold_id: Identifier::parse("holdId", "h".into()).unwrap(),
            user_id: Identifier::parse("userId", "u".into()).unwrap(),
            amount: amount(3_000),
            expires_in: chrono::Duration::seconds(60),
        };
        hold.place(funds, &ctx(now)).unwrap().0
    }

    fn settle(how: Settlement) -> SettleHold {
        SettleHold {
            hold_id: Identifier::parse("holdId", "h".into()).unwrap(),
            user_id: Identifier::parse("userId", "u".into()).unwrap(),
            how,
        }
    }

    #[test]
    fn a_hold_takes_only_the_available_balance() {
        let now = chrono::Utc::now();
        let mut funds = Funds {
            balance: Decimal::from(5_000),
            held: Decimal::from(2_500),
        };
        let hold = PlaceHold {
            hold_id: Identifier::parse("holdId", "h".into()).unwrap(),
            user_id: Identifier::parse("userId", "u".into()).unwrap(),
            amount: amount(2_501),
            expires_in: chrono::Duration::seconds(60),
        };
        assert!(matches!(
            hold.place(&mut funds, &ctx(now)),
            Err(ServiceError::InsufficientFunds)
        ));
        assert_eq!(
            funds.held,
            Decimal::from(2_500),
            "a refusal changes nothing"
        );
    }

    #[test]
    fn a_partial_capture_debits_part_and_releases_the_whole_hold() {
        let now = chrono::Utc::now();
        let mut funds = Funds {
            balance: Decimal::from(10_000),
            held: Decimal::ZERO,
        };
        let mut hold = placed(&mut funds, now);
        let capture = settle(Settlement::Capture(Some(amount(2_000))));
        let Settled::Written(entry, event) =
            capture.settle(&mut hold, &mut funds, &ctx(now)).unwrap()
        else {
            panic!("the capture writes");
        };
        assert_eq!(
            (funds.balance, funds.held),
            (Decimal::from(8_000), Decimal::ZERO)
        );
        assert_eq!(
            (entry.amount, entry.held_delta),
            (Decimal::from(-2_000), Decimal::from(-3_000))
        );
        assert_eq!(event.event_type, HOLD_CAPTURED);
        assert_eq!(hold.points, 20);
        // Settled once: a second settlement writes nothing.
        let void = settle(Settlement::Void);
        assert!(matches!(
            void.settle(&mut hold, &mut funds, &ctx(now)),
            Ok(Settled::Already)
        ));
        let view = HoldView::current(&hold, Currency::KRW);
        let outcome = |value| Outcome {
            value,
            replayed: true,
        };
        assert!(matches!(
            void.answer(outcome(view.clone())),
            Err(ServiceError::HoldNotOpen(_))
        ));
        assert!(capture.answer(outcome(view.clone())).is_ok());
        let other = settle(Settlement::Capture(Some(amount(1_000))));
        assert!(matches!(
            other.answer(outcome(view)),
            Err(ServiceError::KeyReused)
        ));
    }

    #[test]
    fn past_its_deadline_a_hold_expires_whatever_was_asked() {
        let now = chrono::Utc::now();
        let mut funds = Funds {
            balance: Decimal::from(10_000),
            held: Decimal::ZERO,
        };
        let mut hold = placed(&mut funds, now);
        let early = settle(Settlement::Expire);
        assert!(matches!(
            early.settle(&mut hold.clone(), &mut funds.clone(), &ctx(now)),
            Ok(Settled::Already)
        ));
        let late = ctx(now + chrono::Duration::seconds(60));
        let over = settle(Settlement::Capture(Some(amount(3_001))));
        assert!(matches!(
            over.settle(&mut hold.clone(), &mut funds.clone(), &ctx(now)),
            Err(ServiceError::CaptureExceedsHold)
        ));
        let capture = settle(Settlement::Capture(None));
        assert!(matches!(
            capture.settle(&mut hold, &mut funds, &late),
            Ok(Settled::Written(..))
        ));
        assert_eq!(hold.status, HoldStatus::Expired);
        assert_eq!(
            (funds.balance, funds.held),
            (Decimal::from(10_000), Decimal::ZERO)
        );
    }
}
