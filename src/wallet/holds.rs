//! The hold use cases as the API and the consumers call them, the refusal published for
//! a hold requested by event, and the expiry sweeper. What a hold does to a wallet is
//! decided by the hold rules (`rules/holds.rs`).

use super::engine::Request;
use super::requests::{PlaceHold, SettleHold, Settlement};
use crate::domain::Identifier;
use crate::store::holds::{self, HoldRow};
use crate::support::tasks::StopSignal;
use crate::telemetry::metrics;
use crate::wallet::views::HoldView;
use crate::wallet::{unavailable, Outcome, ServiceError, WalletService};

/// How many due holds one sweep releases at most; the next sweep takes the rest.
const SWEEP_BATCH: u32 = 200;

impl WalletService {
    /// How long a hold asked to live `seconds` (the default if `None`) lives; refused
    /// past the maximum.
    pub fn hold_life(&self, seconds: Option<u64>) -> Result<chrono::Duration, ServiceError> {
        let max = self.holds.max_ttl.as_secs();
        let seconds = seconds.unwrap_or(self.holds.default_ttl.as_secs());
        if !(1..=max).contains(&seconds) {
            return Err(ServiceError::Validation(format!(
                "expiresInSeconds must be between 1 and {max}"
            )));
        }
        Ok(chrono::Duration::seconds(seconds as i64))
    }

    /// Reserves funds once per `hold_id`.
    #[tracing::instrument(skip_all, fields(hold_id = %hold.hold_id, user_id = %hold.user_id))]
    pub async fn place_hold(&self, hold: PlaceHold) -> Result<Outcome<HoldView>, ServiceError> {
        self.submit(hold, Request::Hold).await
    }

    /// Captures, voids or expires the hold `hold_id`, once.
    #[tracing::instrument(skip_all, fields(hold_id = %hold_id))]
    pub async fn settle_hold(
        &self,
        hold_id: Identifier,
        how: Settlement,
    ) -> Result<Outcome<HoldView>, ServiceError> {
        let hold = self.hold_row(&hold_id).await?;
        let user_id = Identifier::parse("userId", hold.user_id).map_err(unavailable)?;
        tracing::Span::current().record("user_id", tracing::field::display(&user_id));
        let settle = SettleHold {
            hold_id,
            user_id,
            how,
        };
        let outcome = self.submit(settle.clone(), Request::Settle).await?;
        settle.answer(outcome)
    }

    async fn hold_row(&self, hold_id: &Identifier) -> Result<HoldRow, ServiceError> {
        holds::find(&self.db, hold_id.as_str())
            .await
            .map_err(unavailable)?
            .ok_or(ServiceError::HoldNotFound)
    }

    /// The hold as it is now.
    pub async fn hold(&self, hold_id: &Identifier) -> Result<HoldView, ServiceError> {
        let row = self.hold_row(hold_id).await?;
        Ok(HoldView::current(&row, self.currency))
    }

    /// Releases the holds past their deadline, at most [`SWEEP_BATCH`]; returns how many
    /// this call expired. A hold that fails is logged and left to the next sweep; only
    /// a failure to read the due holds fails the call. Safe beside other instances doing the same: each hold is
    /// settled under its wallet's lock, once. The expiries go to the engine together,
    /// so they are batched like every other movement.
    pub async fn expire_due_holds(&self) -> Result<usize, ServiceError> {
        let due = holds::expired(&self.db, crate::support::clock::now(), SWEEP_BATCH)
            .await
            .map_err(unavailable)?;
        let mut expiries = Vec::with_capacity(due.len());
        for (hold_id, user_id) in due {
            // Its owner came with it: no second read.
            expiries.push(SettleHold {
                hold_id: Identifier::parse("holdId", hold_id).map_err(unavailable)?,
                user_id: Identifier::parse("userId", user_id).map_err(unavailable)?,
                how: Settlement::Expire,
            });
        }
        let answers =
            futures_util::future::join_all(expiries.into_iter().map(|expire| async move {
                let outcome = self.submit(expire.clone(), Request::Settle).await?;
                expire.answer(outcome)
            }))
            .await;
        let mut expired = 0;
        for answer in answers {
            match answer {
                Ok(outcome) if !outcome.replayed => expired += 1,
                // Settled otherwise meanwhile, or being expired by another instance.
                Ok(_) | Err(ServiceError::HoldNotOpen(_) | ServiceError::InProgress { .. }) => {}
                // One hold that cannot be expired now (its wallet busy past the lock
                // wait, say) holds back no other: the next sweep tries it again.
                Err(e) => {
                    tracing::warn!(error = %e, "a due hold could not be expired; the next sweep tries again")
                }
            }
        }
        Ok(expired)
    }
}

/// The expiry sweeper: every `interval`, releases the holds past their deadline, until
/// `stop`. A failed sweep is logged and tried again at the next tick.
pub async fn sweep(service: WalletService, interval: std::time::Duration, stop: StopSignal) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match service.expire_due_holds().await {
            Ok(0) => {}
            Ok(expired) => {
                metrics::holds_expired(expired);
                tracing::info!(expired, "holds expired");
            }
            Err(e) => tracing::warn!(error = %e, "hold sweep failed; trying again"),
        }
    }
}
