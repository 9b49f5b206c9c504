//! What the API answers, serialised with camelCase names and amounts as decimal strings.
//!
//! Views are built only from stored rows, so a reply replayed from the database is
//! byte-for-byte the reply first sent.

use serde::{Deserialize, Serialize};

use crate::domain::Currency;
use crate::store::holds::{HoldRow, HoldStatus};
use crate::store::ledger::EntryType;
use crate::store::ledger::LedgerRow;
use crate::store::payments::{PaymentRow, PaymentStatus};
use crate::store::refunds::RefundRow;
use crate::store::top_ups::TopUpRow;
use crate::store::wallets::WalletRow;
use crate::support::clock::timestamp;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    pub user_id: String,
    /// Decimal string with the currency's digits, e.g. "150000".
    #[schema(example = "150000")]
    pub balance: String,
    /// The sum of open holds, part of `balance` but not available to spend.
    #[schema(example = "20000")]
    pub held: String,
    /// `balance - held`: what a payment or a new hold may take.
    #[schema(example = "130000")]
    pub available: String,
    pub points: i64,
    pub currency: String,
    pub updated_at: String,
}

impl WalletView {
    pub fn new(row: &WalletRow, currency: Currency) -> Self {
        Self {
            user_id: row.user_id.clone(),
            balance: currency.format(row.balance),
            held: currency.format(row.held),
            available: currency.format(row.balance - row.held),
            points: row.points,
            currency: row.currency.clone(),
            updated_at: timestamp(row.updated_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: String,
    pub currency: String,
    pub status: PaymentStatus,
    pub balance_after: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_balance_after: Option<String>,
    /// What refunds and a cancel have given back of it. (Absent only from replies
    /// cached before refunds existed, which replay as they were sent.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(example = "0")]
    pub refunded_amount: String,
}

impl PaymentView {
    /// The payment as it is now (`GET`, and the reply to a cancel).
    pub fn current(row: &PaymentRow, currency: Currency) -> Self {
        Self {
            payment_id: row.payment_id.clone(),
            order_id: row.order_id.clone(),
            user_id: row.user_id.clone(),
            amount: currency.format(row.amount),
            currency: row.currency.clone(),
            status: row.status,
            balance_after: currency.format(row.balance_after),
            created_at: timestamp(row.created_at),
            cancelled_at: row.cancelled_at.map(timestamp),
            cancel_reason: row.cancel_reason.clone(),
            refund_balance_after: row.refund_balance_after.map(|b| currency.format(b)),
            refunded_amount: currency.format(row.refunded_amount),
        }
    }

    /// The payment as the debit answered it: a repeat of the debit gets this same body
    /// even after a cancel, like any idempotent replay.
    pub fn as_debited(row: &PaymentRow, currency: Currency) -> Self {
        Self {
            status: PaymentStatus::Completed,
            cancelled_at: None,
            cancel_reason: None,
            refund_balance_after: None,
            refunded_amount: currency.format(rust_decimal::Decimal::ZERO),
            ..Self::current(row, currency)
        }
    }
}

/// A refund as it was made (a repeat answers the same body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    pub refund_id: String,
    pub order_id: String,
    pub user_id: String,
    #[schema(example = "300")]
    pub amount: String,
    pub currency: String,
    /// What the order's refunds came to with this one.
    #[schema(example = "300")]
    pub refunded_total: String,
    pub balance_after: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
}

impl RefundView {
    pub fn new(row: &RefundRow, currency: Currency) -> Self {
        Self {
            refund_id: row.refund_id.clone(),
            order_id: row.order_id.clone(),
            user_id: row.user_id.clone(),
            amount: currency.format(row.amount),
            currency: row.currency.clone(),
            refunded_total: currency.format(row.refunded_total),
            balance_after: currency.format(row.balance_after),
            reason: row.reason.clone(),
            created_at: timestamp(row.created_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopUpView {
    pub top_up_id: String,
    pub user_id: String,
    pub amount: String,
    pub currency: String,
    pub balance_after: String,
    pub created_at: String,
}

impl TopUpView {
    pub fn new(row: &TopUpRow, currency: Currency) -> Self {
        Self {
            top_up_id: row.top_up_id.clone(),
            user_id: row.user_id.clone(),
            amount: currency.format(row.amount),
            currency: row.currency.clone(),
            balance_after: currency.format(row.balance_after),
            created_at: timestamp(row.created_at),
        }
    }
}

/// A hold, and its wallet as the hold's last change (placing or settling it) left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldView {
    pub hold_id: String,
    pub user_id: String,
    /// What the hold reserved.
    #[schema(example = "25000")]
    pub amount: String,
    /// What the capture debited; only on a captured hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_amount: Option<String>,
    pub currency: String,
    pub status: HoldStatus,
    /// When an open hold is released by itself.
    pub expires_at: String,
    pub created_at: String,
    /// When it was captured, voided or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<String>,
    /// The wallet's balance, held sum and available balance right after this change.
    pub balance: String,
    pub held: String,
    pub available: String,
}

impl HoldView {
    /// The hold as it is now (`GET`, and the reply to a capture or void).
    pub fn current(row: &HoldRow, currency: Currency) -> Self {
        let placed = Self::as_placed(row, currency);
        let (Some(settled_at), Some(balance), Some(held)) = (
            row.settled_at,
            row.settled_balance_after,
            row.settled_held_after,
        ) else {
            return Self {
                status: row.status,
                ..placed
            };
        };
        Self {
            captured_amount: row.captured_amount.map(|a| currency.format(a)),
            status: row.status,
            settled_at: Some(timestamp(settled_at)),
            balance: currency.format(balance),
            held: currency.format(held),
            available: currency.format(balance - held),
            ..placed
        }
    }

    /// The hold as placing it answered: a repeat of the request gets this same body even
    /// after the hold was settled, like any idempotent replay.
    pub fn as_placed(row: &HoldRow, currency: Currency) -> Self {
        Self {
            hold_id: row.hold_id.clone(),
            user_id: row.user_id.clone(),
            amount: currency.format(row.amount),
            captured_amount: None,
            currency: row.currency.clone(),
            status: HoldStatus::Held,
            expires_at: timestamp(row.expires_at),
            created_at: timestamp(row.created_at),
            settled_at: None,
            balance: currency.format(row.balance_after),
            held: currency.format(row.held_after),
            available: currency.format(row.balance_after - row.held_after),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntryView {
    pub entry_id: String,
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    /// Signed: a payment or capture is negative, a top-up or refund positive, a hold,
    /// void or expiry 0.
    pub amount: String,
    pub balance_after: String,
    /// Signed change of the sum held: a hold is positive, its capture, void or expiry
    /// negative.
    pub held_delta: String,
    pub held_after: String,
    /// The top-up id, order id or hold id that caused the entry.
    pub reference: String,
    pub created_at: String,
}

impl LedgerEntryView {
    pub fn new(row: &LedgerRow, currency: Currency) -> Self {
        Self {
            entry_id: row.entry_id.to_string(),
            entry_type: row.entry_type,
            amount: currency.format(row.amount),
            balance_after: currency.format(row.balance_after),
            held_delta: currency.format(row.held_delta),
            held_after: currency.format(row.held_after),
            reference: row.reference.clone(),
            created_at: timestamp(row.created_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPage {
    pub items: Vec<LedgerEntryView>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
