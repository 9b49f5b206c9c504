//! Payments requested by event: `{"orderId","userId","amount"}` records on the requests
//! topic run through the very same debit use case as `POST /api/v1/payments`, so a
//! request that arrives both ways debits once.
//!
//! A completed debit publishes its `payment.completed` event through the outbox like any
//! other; a business refusal publishes `payment.declined` with the problem code as the
//! reason. A request for an order that another request (REST) is paying right now waits
//! for it, up to the idempotency claim's TTL, and then takes its outcome: a replay of the
//! payment, or its own attempt if the other one was refused. Unreadable requests go to
//! the requests topic's DLT at once; a request that keeps failing on a dependency goes
//! there after the bounded retries.

use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;

use crate::domain::{Amount, Identifier, RawAmount};
use crate::kafka::worker::{decode_json, HandlerError, RecordHandler};
use crate::wallet::{ServiceError, WalletService};

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
        let reason = match result {
            Ok(_) => return Ok(()),
            Err(ServiceError::InProgress { .. }) => {
                return Err(HandlerError::InFlight(format!(
                    "order {order_id} is being paid by another request"
                )))
            }
            Err(ServiceError::InsufficientFunds) => "insufficient_funds",
            Err(ServiceError::WalletNotFound) => "wallet_not_found",
            Err(ServiceError::KeyReused) => "idempotency_key_reused",
            Err(ServiceError::BalanceLimit) => "balance_limit_exceeded",
            Err(ServiceError::Validation(message)) => return Err(HandlerError::Poison(message)),
            Err(other) => return Err(HandlerError::Transient(other.into())),
        };
        // Keyed by the request record, so a redelivery does not decline twice.
        let decline_id = format!(
            "{}/{}/{}",
            record.topic(),
            record.partition(),
            record.offset()
        );
        self.service
            .publish_declined(&decline_id, &order_id, &user_id, amount, reason)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))
    }
}
