//! What a request by event that was refused publishes, through the outbox: a decline
//! when the order (or hold) is not charged, a rejection naming what stands when its id
//! names a charge made on other terms. A decline is decided under the wallet's row lock,
//! as every batch on that wallet writes, after a last look at what the id names then: a
//! REST retry that paid the order in between makes it no decline, so "declined" never
//! follows "completed" for one user on the topic.

use rust_decimal::Decimal;
use sqlx::MySqlConnection;

use crate::domain::events::{
    HoldEvent, PaymentEvent, HOLD_DECLINED, HOLD_REQUEST_REJECTED, PAYMENT_DECLINED,
    PAYMENT_REFUND_DECLINED, PAYMENT_REFUND_REJECTED, PAYMENT_REQUEST_REJECTED,
};
use crate::domain::{Amount, Identifier};
use crate::store::holds::{self, HoldRow, HoldStatus};
use crate::store::payments::{self, PaymentRow};
use crate::wallet::requests::PlaceHold;
use crate::wallet::views::HoldView;
use crate::wallet::WalletService;

/// Why a payment requested by event was refused, as the event published for it says.
#[derive(Debug)]
pub enum Refusal {
    /// The order is not charged: `payment.declined`, with the problem code as its reason.
    Declined { reason: &'static str },
    /// The order id names a charge made on other terms: `payment.request.rejected`,
    /// naming its payment (if it is one) and its status (`COMPLETED`, `REFUNDED`,
    /// `CANCELLED`, or a hold's `HELD`, `VOIDED`, `EXPIRED`). A decline here would tell
    /// every consumer that a charged order is unpaid.
    Rejected {
        reason: &'static str,
        payment_id: Option<String>,
        order_status: String,
    },
}

/// A hold request by event refused: what `hold.declined` or `hold.request.rejected`
/// says of it.
#[derive(Debug, Clone)]
pub struct HoldRefusal {
    pub hold_id: String,
    /// The requested wallet, or the hold's owner for a capture or void.
    pub user_id: String,
    /// The requested amount, or what the hold holds for a capture or void.
    pub amount: Decimal,
    /// The problem code.
    pub reason: &'static str,
    /// The hold's status, when it exists.
    pub status: Option<HoldStatus>,
    /// The hold id names a hold (or a payment) on other terms, or a capture was
    /// repeated with another amount: `hold.request.rejected`, not a decline.
    pub rejected: bool,
    /// A request to place the hold (a decline of it is checked under the lock).
    placing: bool,
}

impl HoldRefusal {
    pub fn of_placing(hold: &PlaceHold) -> Self {
        Self {
            hold_id: hold.hold_id.to_string(),
            user_id: hold.user_id.to_string(),
            amount: hold.amount.value(),
            reason: "",
            status: None,
            rejected: false,
            placing: true,
        }
    }

    pub fn of_settling(hold: &HoldView) -> Self {
        Self {
            hold_id: hold.hold_id.clone(),
            user_id: hold.user_id.clone(),
            amount: hold.amount.parse().unwrap_or_default(),
            reason: "",
            status: Some(hold.status),
            rejected: false,
            placing: false,
        }
    }
}

/// A refund request by event refused: what `payment.refund.declined` or
/// `payment.refund.rejected` says of it.
#[derive(Debug, Clone)]
pub struct RefundRefusal {
    pub refund_id: Identifier,
    pub order_id: Identifier,
    /// As asked; all that remained when `None`.
    pub amount: Option<Amount>,
    /// The problem code.
    pub reason: &'static str,
    /// The refund id names a refund made on other terms: `payment.refund.rejected`.
    pub rejected: bool,
}

/// What an order id names now.
enum Charge {
    Payment(PaymentRow),
    Hold(HoldRow),
}

/// Locks `user_id`'s wallet row (when it exists), as every batch on that wallet does,
/// and reads what `order_id` names now.
async fn charge_now(
    conn: &mut MySqlConnection,
    user_id: &str,
    order_id: &str,
) -> Result<Option<Charge>, sqlx::Error> {
    sqlx::query("SELECT user_id FROM wallets WHERE user_id = ? FOR UPDATE")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    if let Some(payment) = payments::find_many(conn, &[order_id]).await?.pop() {
        return Ok(Some(Charge::Payment(payment)));
    }
    Ok(holds::find_many(conn, &[order_id])
        .await?
        .pop()
        .map(Charge::Hold))
}

/// The event id of a refusal: named by the request record, so refusing the same
/// request twice publishes once.
fn refusal_event_id(request_id: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, request_id.as_bytes()).to_string()
}

impl WalletService {
    /// Publishes (through the outbox) why a payment requested by event was refused.
    /// `request_id` names the request, so refusing the same request twice publishes once.
    pub async fn publish_refusal(
        &self,
        request_id: &str,
        order_id: &Identifier,
        user_id: &Identifier,
        amount: Amount,
        refusal: Refusal,
    ) -> Result<(), sqlx::Error> {
        let now = crate::support::clock::now();
        let mut tx = self.db.begin().await?;
        let refusal = match refusal {
            Refusal::Declined { reason } => {
                match charge_now(&mut tx, user_id.as_str(), order_id.as_str()).await? {
                    None => Refusal::Declined { reason },
                    // Paid on these very terms meanwhile: `payment.completed` says so.
                    Some(Charge::Payment(p))
                        if p.user_id == user_id.as_str()
                            && p.amount.normalize() == amount.value() =>
                    {
                        tx.rollback().await?;
                        return Ok(());
                    }
                    Some(charge) => rejection(charge),
                }
            }
            rejected => rejected,
        };
        let (event_type, reason, payment_id, order_status) = match refusal {
            Refusal::Declined { reason } => (PAYMENT_DECLINED, reason, None, None),
            Refusal::Rejected {
                reason,
                payment_id,
                order_status,
            } => (
                PAYMENT_REQUEST_REJECTED,
                reason,
                payment_id,
                Some(order_status),
            ),
        };
        let event = PaymentEvent {
            event_id: refusal_event_id(request_id),
            event_type: event_type.to_owned(),
            order_id: order_id.to_string(),
            user_id: user_id.to_string(),
            payment_id,
            amount: self.currency.format(amount.value()),
            currency: self.currency.code().to_owned(),
            points: 0,
            reason: Some(reason.to_owned()),
            order_status,
            refund_id: None,
            occurred_at: crate::support::clock::timestamp(now),
        };
        let appended = crate::outbox::append(&mut tx, &event.into(), now).await?;
        tx.commit().await?;
        if appended {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// Publishes (through the outbox) `hold.declined` or `hold.request.rejected` for a
    /// hold request by event. `request_id` names the request, so refusing the same
    /// request twice publishes once.
    pub async fn publish_hold_refusal(
        &self,
        request_id: &str,
        mut refusal: HoldRefusal,
    ) -> Result<(), sqlx::Error> {
        let now = crate::support::clock::now();
        let mut tx = self.db.begin().await?;
        if refusal.placing && !refusal.rejected {
            match charge_now(&mut tx, &refusal.user_id, &refusal.hold_id).await? {
                None => {}
                // Placed on these very terms meanwhile: `hold.created` says so.
                Some(Charge::Hold(h))
                    if h.user_id == refusal.user_id
                        && h.amount.normalize() == refusal.amount.normalize() =>
                {
                    tx.rollback().await?;
                    return Ok(());
                }
                Some(charge) => {
                    refusal.reason = "idempotency_key_reused";
                    refusal.rejected = true;
                    refusal.status = match charge {
                        Charge::Hold(h) => Some(h.status),
                        Charge::Payment(_) => None,
                    };
                }
            }
        }
        let event_type = if refusal.rejected {
            HOLD_REQUEST_REJECTED
        } else {
            HOLD_DECLINED
        };
        let event = HoldEvent {
            event_id: refusal_event_id(request_id),
            event_type: event_type.to_owned(),
            hold_id: refusal.hold_id,
            user_id: refusal.user_id,
            amount: self.currency.format(refusal.amount),
            captured_amount: None,
            currency: self.currency.code().to_owned(),
            points: 0,
            status: refusal.status.map(|s| s.to_string()),
            reason: Some(refusal.reason.to_owned()),
            occurred_at: crate::support::clock::timestamp(now),
        };
        let appended = crate::outbox::append(&mut tx, &event.into(), now).await?;
        tx.commit().await?;
        if appended {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// Publishes (through the outbox) `payment.refund.declined` (nothing was refunded
    /// under this refund id) or `payment.refund.rejected` (the refund id names a refund
    /// made on other terms), keyed by the payment's owner. `request_id` names the
    /// request, so refusing the same request twice publishes once. A refund refused for
    /// want of what remains stays refused: what remains only shrinks.
    pub async fn publish_refund_refusal(
        &self,
        request_id: &str,
        refusal: RefundRefusal,
    ) -> Result<(), sqlx::Error> {
        let now = crate::support::clock::now();
        let Some(payment) = payments::find(&self.db, refusal.order_id.as_str()).await? else {
            return Ok(());
        };
        let event_type = if refusal.rejected {
            PAYMENT_REFUND_REJECTED
        } else {
            PAYMENT_REFUND_DECLINED
        };
        let amount = refusal
            .amount
            .map_or_else(|| payment.refundable(), |a| a.value());
        let event = PaymentEvent {
            event_id: refusal_event_id(request_id),
            event_type: event_type.to_owned(),
            order_id: payment.order_id,
            user_id: payment.user_id,
            payment_id: Some(payment.payment_id),
            amount: self.currency.format(amount),
            currency: self.currency.code().to_owned(),
            points: 0,
            reason: Some(refusal.reason.to_owned()),
            order_status: Some(payment.status.to_string()),
            refund_id: Some(refusal.refund_id.to_string()),
            occurred_at: crate::support::clock::timestamp(now),
        };
        let mut conn = self.db.acquire().await?;
        if crate::outbox::append(&mut conn, &event.into(), now).await? {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// What a payment request whose order id is taken on other terms is told: the
    /// charge the id names now, or `None` when nothing is recorded under it yet (the
    /// other request is in flight).
    pub async fn rejection(&self, order_id: &Identifier) -> Result<Option<Refusal>, sqlx::Error> {
        if let Some(payment) = payments::find(&self.db, order_id.as_str()).await? {
            return Ok(Some(rejection(Charge::Payment(payment))));
        }
        Ok(holds::find(&self.db, order_id.as_str())
            .await?
            .map(|hold| rejection(Charge::Hold(hold))))
    }

    /// True when a request to place the hold `hold_id` holds its idempotency claim
    /// now: a capture or void of it waits for it. False when Redis cannot tell.
    pub async fn placement_in_flight(&self, hold_id: &Identifier) -> bool {
        let pending = async {
            let mut conn = self.redis.connection().await?;
            self.idempotency
                .is_pending(&mut conn, PlaceHold::placement_key(hold_id))
                .await
        };
        pending.await.unwrap_or(false)
    }
}

fn rejection(charge: Charge) -> Refusal {
    let (payment_id, order_status) = match charge {
        Charge::Payment(p) => (Some(p.payment_id), p.status.to_string()),
        Charge::Hold(h) => (None, h.status.to_string()),
    };
    Refusal::Rejected {
        reason: "idempotency_key_reused",
        payment_id,
        order_status,
    }
}
