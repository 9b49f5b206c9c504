//! Payments requested by event: `{"orderId","userId","amount"}` records on the requests
//! topic run through the very same debit use case as `POST /api/v1/payments`, so a
//! request that arrives both ways debits once.
//!
//! Every readable request ends with its order's outcome on the events topic:
//! - paid: `payment.completed`, published through the outbox by whichever request
//!   debited (this one, or the REST request for the same order);
//! - refused, the order unpaid: `payment.declined` with the problem code as the reason;
//! - refused because the order is already paid under other terms (another amount or
//!   user): `payment.request.rejected`, naming the order's payment and its status, never
//!   a decline, which would tell consumers that a paid order is unpaid.
//!
//! Holds are requested on the same topic, by `type`: `{"type":"hold","holdId","userId",
//! "amount","expiresInSeconds"?}`, `{"type":"capture","holdId","amount"?}` and
//! `{"type":"void","holdId"}` run the same use cases as `/api/v1/holds`; each ends with
//! the hold's event (`hold.created`, `hold.captured`, `hold.voided`) or, refused,
//! `hold.declined` with the problem code as the reason. A capture or void of a hold
//! that does not exist goes to the DLT: there is no wallet to tell.
//!
//! A request for an order that another request is paying right now waits for it (up to
//! the idempotency claim's TTL) and then takes its outcome. Unreadable requests go to
//! the requests topic's DLT at once; a request that keeps failing on a dependency goes
//! there after the bounded retries.

use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;

use crate::consumers::{decode_json, HandlerError, RecordHandler};
use crate::domain::{Amount, Identifier, RawAmount};
use crate::wallet::{HoldRefusal, PlaceHold, RefundRefusal, Settlement};
use crate::wallet::{Refusal, ServiceError, WalletService};

/// What kind of request a record is; a record without `type` is a payment.
#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HoldRequest {
    hold_id: String,
    user_id: String,
    amount: RawAmount,
    expires_in_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettleRequest {
    hold_id: String,
    amount: Option<RawAmount>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundRequest {
    refund_id: String,
    order_id: String,
    amount: Option<RawAmount>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentRequest {
    order_id: String,
    user_id: String,
    amount: RawAmount,
}

/// Runs requested payments.
pub struct PaymentRequestHandler {
    pub service: WalletService,
}

impl RecordHandler for PaymentRequestHandler {
    async fn handle(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let kind: Kind = decode_json(record, "a payment or hold request")?;
        match kind.kind.as_deref() {
            None | Some("payment") => self.pay(record).await,
            Some("hold") => self.hold(record).await,
            Some(kind @ ("capture" | "void")) => self.settle(record, kind == "capture").await,
            Some("refund") => self.refund(record).await,
            Some(other) => Err(HandlerError::Poison(format!(
                "unknown request type {other:?}"
            ))),
        }
    }
}

/// The request record's own id: a redelivery refuses once.
fn request_id(record: &OwnedMessage) -> String {
    format!(
        "{}/{}/{}",
        record.topic(),
        record.partition(),
        record.offset()
    )
}

impl PaymentRequestHandler {
    async fn pay(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let request: PaymentRequest = decode_json(record, "a payment request")?;
        let poison = |e: crate::domain::ValidationError| HandlerError::Poison(e.0);
        let order_id = Identifier::parse("orderId", request.order_id).map_err(poison)?;
        let user_id = Identifier::parse("userId", request.user_id).map_err(poison)?;
        let amount =
            Amount::parse("amount", request.amount, self.service.currency()).map_err(poison)?;

        let result = self
            .service
            .pay(order_id.clone(), user_id.clone(), amount)
            .await;
        let declined = |reason| Refusal::Declined { reason };
        let refusal = match result {
            Ok(_) => return Ok(()),
            Err(ServiceError::InProgress { .. }) => return Err(in_flight(&order_id)),
            Err(ServiceError::KeyReused) => self.reused(&order_id).await?,
            Err(ServiceError::InsufficientFunds) => declined("insufficient_funds"),
            Err(ServiceError::WalletNotFound) => declined("wallet_not_found"),
            Err(ServiceError::BalanceLimit) => declined("balance_limit_exceeded"),
            Err(ServiceError::Validation(message)) => return Err(HandlerError::Poison(message)),
            Err(other) => return Err(HandlerError::Transient(other.into())),
        };
        // Keyed by the request record, so a redelivery does not refuse twice.
        self.service
            .publish_refusal(&request_id(record), &order_id, &user_id, amount, refusal)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))
    }

    async fn hold(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let request: HoldRequest = decode_json(record, "a hold request")?;
        let poison = |e: crate::domain::ValidationError| HandlerError::Poison(e.0);
        let currency = self.service.currency();
        let hold = PlaceHold {
            hold_id: Identifier::parse("holdId", request.hold_id).map_err(poison)?,
            user_id: Identifier::parse("userId", request.user_id).map_err(poison)?,
            amount: Amount::parse("amount", request.amount, currency).map_err(poison)?,
            expires_in: self
                .service
                .hold_life(request.expires_in_seconds)
                .map_err(|e| HandlerError::Poison(e.to_string()))?,
        };
        let refusal = HoldRefusal::of_placing(&hold);
        let result = self.service.place_hold(hold).await.map(|_| ());
        self.refuse_hold(record, refusal, result).await
    }

    async fn settle(&self, record: &OwnedMessage, capture: bool) -> Result<(), HandlerError> {
        let request: SettleRequest = decode_json(record, "a capture or void request")?;
        let poison = |e: crate::domain::ValidationError| HandlerError::Poison(e.0);
        let hold_id = Identifier::parse("holdId", request.hold_id).map_err(poison)?;
        let how = match (capture, request.amount) {
            (true, amount) => Settlement::Capture(
                amount
                    .map(|raw| Amount::parse("amount", raw, self.service.currency()))
                    .transpose()
                    .map_err(poison)?,
            ),
            (false, None) => Settlement::Void,
            (false, Some(_)) => return Err(HandlerError::Poison("a void takes no amount".into())),
        };
        let refusal = match self.service.hold(&hold_id).await {
            Ok(hold) => HoldRefusal::of_settling(&hold),
            // Being placed right now: wait for it, as a payment waits for its order.
            Err(ServiceError::HoldNotFound) if self.service.placement_in_flight(&hold_id).await => {
                return Err(HandlerError::InFlight(format!(
                    "hold {hold_id} is being placed by another request"
                )))
            }
            Err(ServiceError::HoldNotFound) => {
                return Err(HandlerError::Poison(format!("hold {hold_id} not found")))
            }
            Err(other) => return Err(HandlerError::Transient(other.into())),
        };
        let result = self.service.settle_hold(hold_id, how).await.map(|_| ());
        self.refuse_hold(record, refusal, result).await
    }

    async fn refund(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        let request: RefundRequest = decode_json(record, "a refund request")?;
        let poison = |e: crate::domain::ValidationError| HandlerError::Poison(e.0);
        let refund_id = Identifier::parse("refundId", request.refund_id).map_err(poison)?;
        let order_id = Identifier::parse("orderId", request.order_id).map_err(poison)?;
        let amount = request
            .amount
            .map(|raw| Amount::parse("amount", raw, self.service.currency()))
            .transpose()
            .map_err(poison)?;
        if request
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > 255)
        {
            return Err(HandlerError::Poison(
                "reason must be at most 255 characters".into(),
            ));
        }
        let result = self
            .service
            .refund(refund_id.clone(), order_id.clone(), amount, request.reason)
            .await;
        let (reason, rejected) = match result {
            Ok(_) => return Ok(()),
            Err(ServiceError::InProgress { .. }) => {
                return Err(HandlerError::InFlight(format!(
                    "refund {refund_id} is being made by another request"
                )))
            }
            // No payment, so no wallet to tell.
            Err(ServiceError::PaymentNotFound) => {
                return Err(HandlerError::Poison(format!(
                    "payment {order_id} not found"
                )))
            }
            Err(ServiceError::RefundExceedsPayment) => ("refund_exceeds_payment", false),
            Err(ServiceError::BalanceLimit) => ("balance_limit_exceeded", false),
            Err(ServiceError::KeyReused) => ("idempotency_key_reused", true),
            Err(ServiceError::Validation(message)) => return Err(HandlerError::Poison(message)),
            Err(other) => return Err(HandlerError::Transient(other.into())),
        };
        let refusal = RefundRefusal {
            refund_id,
            order_id,
            amount,
            reason,
            rejected,
        };
        self.service
            .publish_refund_refusal(&request_id(record), refusal)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))
    }

    /// Publishes `hold.declined` for a hold request the use case refused.
    async fn refuse_hold(
        &self,
        record: &OwnedMessage,
        mut refusal: HoldRefusal,
        result: Result<(), ServiceError>,
    ) -> Result<(), HandlerError> {
        refusal.reason = match result {
            Ok(()) => return Ok(()),
            Err(ServiceError::InProgress { .. }) => {
                return Err(HandlerError::InFlight(format!(
                    "hold {} is being changed by another request",
                    refusal.hold_id
                )))
            }
            Err(ServiceError::HoldNotOpen(hold)) => {
                refusal.status = Some(hold.status);
                "hold_not_open"
            }
            // The hold id names a hold or payment on other terms (or a capture was
            // repeated with another amount): a rejection that names what stands.
            Err(ServiceError::KeyReused) => {
                let hold_id = Identifier::parse("holdId", refusal.hold_id.clone())
                    .map_err(|e| HandlerError::Poison(e.0))?;
                refusal.status = match self.service.hold(&hold_id).await {
                    Ok(hold) => Some(hold.status),
                    Err(ServiceError::HoldNotFound) => match self.service.payment(&hold_id).await {
                        Ok(_) => None,
                        Err(ServiceError::PaymentNotFound) => {
                            return Err(HandlerError::InFlight(format!(
                                "hold {hold_id} is being placed by another request"
                            )))
                        }
                        Err(other) => return Err(HandlerError::Transient(other.into())),
                    },
                    Err(other) => return Err(HandlerError::Transient(other.into())),
                };
                refusal.rejected = true;
                "idempotency_key_reused"
            }
            Err(ServiceError::InsufficientFunds) => "insufficient_funds",
            Err(ServiceError::WalletNotFound) => "wallet_not_found",
            Err(ServiceError::CaptureExceedsHold) => "capture_exceeds_hold",
            Err(ServiceError::Validation(message)) => return Err(HandlerError::Poison(message)),
            Err(other) => return Err(HandlerError::Transient(other.into())),
        };
        self.service
            .publish_hold_refusal(&request_id(record), refusal)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))
    }
    /// The order id was used for a request with other terms: the answer depends on
    /// what became of that request.
    async fn reused(&self, order_id: &Identifier) -> Result<Refusal, HandlerError> {
        match self.service.rejection(order_id).await {
            Ok(Some(rejected)) => Ok(rejected),
            // The other request holds the key but has not paid (yet): it is in flight.
            // If it fails, this one may still pay the order.
            Ok(None) => Err(in_flight(order_id)),
            Err(other) => Err(HandlerError::Transient(other.into())),
        }
    }
}

fn in_flight(order_id: &Identifier) -> HandlerError {
    HandlerError::InFlight(format!("order {order_id} is being paid by another request"))
}
