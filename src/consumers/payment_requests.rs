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
//! A request for an order that another request is paying right now waits for it (up to
//! the idempotency claim's TTL) and then takes its outcome. Unreadable requests go to
//! the requests topic's DLT at once; a request that keeps failing on a dependency goes
//! there after the bounded retries.

use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;

use crate::consumers::{decode_json, HandlerError, RecordHandler};
use crate::domain::{Amount, Identifier, RawAmount};
use crate::wallet::{Refusal, ServiceError, WalletService};

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
        let request_id = format!(
            "{}/{}/{}",
            record.topic(),
            record.partition(),
            record.offset()
        );
        self.service
            .publish_refusal(&request_id, &order_id, &user_id, amount, refusal)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))
    }
}

impl PaymentRequestHandler {
    /// The order id was used for a request with other terms: the answer depends on
    /// what became of that request.
    async fn reused(&self, order_id: &Identifier) -> Result<Refusal, HandlerError> {
        match self.service.payment(order_id).await {
            Ok(order) => Ok(Refusal::Rejected {
                reason: "idempotency_key_reused",
                payment_id: order.payment_id,
                order_status: order.status,
            }),
            // The other request holds the key but has not paid (yet): it is in flight.
            // If it fails, this one may still pay the order.
            Err(ServiceError::PaymentNotFound) => Err(in_flight(order_id)),
            Err(other) => Err(HandlerError::Transient(other.into())),
        }
    }
}

fn in_flight(order_id: &Identifier) -> HandlerError {
    HandlerError::InFlight(format!("order {order_id} is being paid by another request"))
}
