//! The events the wallet publishes, as they appear on the events topic.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_CANCELLED: &str = "payment.cancelled";
/// Part or all of a payment was refunded: `amount` is the refund's, `refundId` names it
/// and `points` are the points taken back with it.
pub const PAYMENT_REFUNDED: &str = "payment.refunded";
/// A refund requested by event was refused and nothing was refunded under its
/// `refundId`: `reason` is the problem code (`refund_exceeds_payment`, …), `orderStatus`
/// the payment's status.
pub const PAYMENT_REFUND_DECLINED: &str = "payment.refund.declined";
/// A refund requested by event was refused because its `refundId` names a refund made
/// on other terms (another order or amount), which stands.
pub const PAYMENT_REFUND_REJECTED: &str = "payment.refund.rejected";
/// A payment requested by event was refused and the order is not paid.
pub const PAYMENT_DECLINED: &str = "payment.declined";
/// A payment requested by event was refused because its order already has a payment
/// with other terms (another amount or user). Says nothing against the order: the
/// order stands as `orderStatus` tells, and `paymentId` names its payment.
pub const PAYMENT_REQUEST_REJECTED: &str = "payment.request.rejected";

pub const HOLD_CREATED: &str = "hold.created";
pub const HOLD_CAPTURED: &str = "hold.captured";
pub const HOLD_VOIDED: &str = "hold.voided";
pub const HOLD_EXPIRED: &str = "hold.expired";
/// A hold requested by event was refused: nothing was reserved or settled.
pub const HOLD_DECLINED: &str = "hold.declined";
/// A hold requested by event was refused because its `holdId` names a hold (or a
/// payment) made on other terms, or a capture was repeated with another amount: says
/// nothing against that hold, which stands as `status` tells.
pub const HOLD_REQUEST_REJECTED: &str = "hold.request.rejected";

/// Header names carried by every event record.
pub const HEADER_EVENT_ID: &str = "event-id";
pub const HEADER_EVENT_TYPE: &str = "event-type";

/// A payment event. The Kafka key is `userId`, so one user's events stay in order.
///
/// On `payment.declined` and `payment.request.rejected`, `userId` and `amount` are the
/// request's; on `payment.request.rejected`, `paymentId` and `orderStatus` are the
/// order's existing payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentEvent {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub order_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    pub amount: String,
    pub currency: String,
    /// Points earned (completed) or taken back (refunded, cancelled); 0 for a decline.
    #[serde(default)]
    pub points: i64,
    /// Why a requested payment was declined or rejected: the problem `code`; on
    /// `payment.refunded`, the refund's reason when it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On a rejected request: the status of the order's existing payment,
    /// `COMPLETED` or `CANCELLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_status: Option<String>,
    /// On `payment.refunded`: the refund's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    pub occurred_at: String,
}

/// A hold event, keyed by `userId` like payment events, on the same topic.
///
/// `amount` is what the hold reserved; on `hold.captured`, `capturedAmount` is what was
/// debited and `points` what it earned. On `hold.declined`, `reason` is the problem
/// code and `status` the hold's, when it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldEvent {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub hold_id: String,
    pub user_id: String,
    pub amount: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_amount: Option<String>,
    pub currency: String,
    #[serde(default)]
    pub points: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: String,
}

/// Any event the wallet writes to its outbox, in the order it was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    Payment(PaymentEvent),
    Hold(HoldEvent),
}

impl Event {
    pub fn event_id(&self) -> &str {
        match self {
            Self::Payment(e) => &e.event_id,
            Self::Hold(e) => &e.event_id,
        }
    }

    pub fn event_type(&self) -> &str {
        match self {
            Self::Payment(e) => &e.event_type,
            Self::Hold(e) => &e.event_type,
        }
    }

    /// The Kafka key.
    pub fn user_id(&self) -> &str {
        match self {
            Self::Payment(e) => &e.user_id,
            Self::Hold(e) => &e.user_id,
        }
    }
}

impl From<PaymentEvent> for Event {
    fn from(event: PaymentEvent) -> Self {
        Self::Payment(event)
    }
}

impl From<HoldEvent> for Event {
    fn from(event: HoldEvent) -> Self {
        Self::Hold(event)
    }
}

/// Points for paying `amount`: `amount × rate`, rounded down.
pub fn points_for(amount: Decimal, rate: Decimal) -> i64 {
    (amount * rate).floor().to_i64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_down() {
        let rate = Decimal::new(1, 2);
        assert_eq!(points_for(Decimal::from(1_000), rate), 10);
        assert_eq!(points_for(Decimal::from(199), rate), 1);
        assert_eq!(points_for(Decimal::from(99), rate), 0);
        assert_eq!(points_for(Decimal::new(12345, 2), rate), 1);
    }
}
