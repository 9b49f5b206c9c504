//! The batch's transaction: every wallet row locked once, each command checked in order
//! against its wallet's running balance, one `UPDATE wallets` for the net changes and
//! one multi-row `INSERT` per table, one commit.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{Answer, Job, Reply, Request};
use crate::domain::events::{Event, PAYMENT_COMPLETED};
use crate::lock::BatchLocks;
use crate::store::holds::{self, HoldRow};
use crate::store::{ledger, payments, top_ups, wallets};
use crate::telemetry::metrics;
use crate::wallet::attempt::Failure;
use crate::wallet::commands::{payment_event, Command, Debit, TopUp, TxContext};
use crate::wallet::holds::{Funds, PlaceHold, SettleHold, Settled};
use crate::wallet::replay;
use crate::wallet::views::{HoldView, PaymentView, TopUpView};
use crate::wallet::{balance_limit, Outcome, ServiceError, WalletService};

/// The Redis locks a batch holds and the connection that renews them.
pub(super) struct Held {
    pub locks: BatchLocks,
    pub conn: MultiplexedConnection,
}

impl WalletService {
    /// One transaction for `jobs`; one answer per job, in order.
    pub(super) async fn apply_batch(
        &self,
        jobs: &[&Job],
        held: Option<&mut Held>,
    ) -> Result<Vec<Answer>, Failure> {
        let started = Instant::now();
        let mut tx = self.db.begin().await?;
        let mut user_ids: Vec<&str> = jobs.iter().map(|job| job.user_id()).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let rows = wallets::lock_many(&mut tx, &user_ids).await?;
        if let Some(held) = held.as_deref() {
            for row in &rows {
                let fence = held.locks.fence(&row.user_id).unwrap_or(0);
                if row.fence_token > fence {
                    tx.rollback().await?;
                    return Err(Failure::Stale {
                        user_id: row.user_id.clone(),
                        seen: row.fence_token,
                    });
                }
            }
        }
        let order_ids: Vec<&str> = keys(jobs, |r| matches!(r, Request::Debit(_)));
        let top_up_ids: Vec<&str> = keys(jobs, |r| matches!(r, Request::TopUp(_)));
        let hold_ids: Vec<&str> =
            keys(jobs, |r| matches!(r, Request::Hold(_) | Request::Settle(_)));
        let paid = payments::find_many(&mut tx, &order_ids).await?;
        let topped = top_ups::find_many(&mut tx, &top_up_ids).await?;
        let holds_found = holds::find_many(&mut tx, &hold_ids).await?;

        let ctx = TxContext {
            fence: None,
            now: crate::support::clock::now(),
            currency: self.currency,
            points_rate: self.points_rate,
        };
        let mut plan = Plan::new(&ctx, rows, paid, topped, holds_found);
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let answer = plan.apply(&job.request);
            if matches!(&answer, Ok(outcome) if !outcome.replayed) {
                plan.written_deadline = Some(
                    plan.written_deadline
                        .map_or(job.deadline, |deadline| deadline.min(job.deadline)),
                );
            }
            answers.push(answer);
        }
        if plan.is_empty() {
            tx.rollback().await?;
            return Ok(answers);
        }

        let fence = |user_id: &str| held.as_deref().and_then(|h| h.locks.fence(user_id));
        let deltas: Vec<wallets::Delta<'_>> = plan
            .deltas()
            .map(|(user_id, change)| wallets::Delta {
                user_id,
                amount: change.balance,
                held: change.held,
                fence: fence(user_id),
            })
            .collect();
        if !wallets::apply_deltas(&mut tx, &deltas, ctx.now).await? {
            return Err(Failure::conflict());
        }
        payments::insert_many(&mut tx, &plan.payments).await?;
        top_ups::insert_many(&mut tx, &plan.top_ups).await?;
        let (placed, settled) = plan.hold_writes();
        holds::insert_many(&mut tx, &placed).await?;
        if !holds::settle_many(&mut tx, &settled).await? {
            return Err(Failure::conflict());
        }
        ledger::append_many(&mut tx, &plan.entries, ctx.now).await?;
        crate::outbox::append_many(&mut tx, &plan.events, ctx.now).await?;

        if let Some(held) = held {
            let renewed = self.lock.renew_batch(&mut held.conn, &mut held.locks).await;
            if !matches!(renewed, Ok(true)) {
                tx.rollback().await?;
                return Err(Failure::LeaseLost);
            }
        }
        if plan
            .written_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            // The next attempt answers the late requests and applies the others.
            tx.rollback().await?;
            return Err(Failure::Retry(anyhow::anyhow!("a request ran out of time")));
        }
        tx.commit().await?;
        if !plan.events.is_empty() {
            self.outbox_wake.notify_one();
        }
        metrics::transaction("batch", started.elapsed());
        metrics::batch(jobs.len(), user_ids.len());
        Ok(answers)
    }
}

/// The idempotency keys of the jobs `wanted` picks.
fn keys<'a>(jobs: &[&'a Job], wanted: impl Fn(&Request) -> bool) -> Vec<&'a str> {
    let mut keys: Vec<&str> = jobs
        .iter()
        .filter(|job| wanted(&job.request))
        .map(|job| job.request.key().as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// What the batch writes, decided command by command.
struct Plan<'c> {
    ctx: &'c TxContext,
    /// Each locked wallet's funds before the batch and as the batch leaves them.
    balances: HashMap<String, (Funds, Funds)>,
    /// Orders and top-ups recorded before the batch or by an earlier command of it.
    paid: HashMap<String, payments::PaymentRow>,
    topped: HashMap<String, top_ups::TopUpRow>,
    /// Holds recorded before the batch or placed by it, as the batch leaves them.
    holds: HashMap<String, PlannedHold>,
    payments: Vec<payments::PaymentRow>,
    top_ups: Vec<top_ups::TopUpRow>,
    entries: Vec<ledger::NewEntry>,
    events: Vec<Event>,
    /// The earliest deadline of a command that writes.
    written_deadline: Option<Instant>,
}

impl<'c> Plan<'c> {
    fn new(
        ctx: &'c TxContext,
        rows: Vec<wallets::WalletRow>,
        paid: Vec<payments::PaymentRow>,
        topped: Vec<top_ups::TopUpRow>,
        held: Vec<HoldRow>,
    ) -> Self {
        Self {
            ctx,
            balances: rows
                .into_iter()
                .map(|row| {
                    let funds = Funds::of(&row);
                    (row.user_id, (funds, funds))
                })
                .collect(),
            holds: held
                .into_iter()
                .map(|row| {
                    let hold = PlannedHold {
                        row,
                        placed: false,
                        settled: false,
                    };
                    (hold.row.hold_id.clone(), hold)
                })
                .collect(),
            paid: paid.into_iter().map(|p| (p.order_id.clone(), p)).collect(),
            topped: topped
                .into_iter()
                .map(|t| (t.top_up_id.clone(), t))
                .collect(),
            payments: Vec::new(),
            top_ups: Vec::new(),
            entries: Vec::new(),
            events: Vec::new(),
            written_deadline: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every wallet whose funds the batch changes, with the net change.
    fn deltas(&self) -> impl Iterator<Item = (&str, Funds)> {
        self.balances
            .iter()
            .filter(|(_, (before, after))| before != after)
            .map(|(user_id, (before, after))| {
                let change = Funds {
                    balance: after.balance - before.balance,
                    held: after.held - before.held,
                };
                (user_id.as_str(), change)
            })
    }

    /// The holds the batch places (in their final state) and the earlier ones it
    /// settles.
    fn hold_writes(&self) -> (Vec<&HoldRow>, Vec<&HoldRow>) {
        let placed = self.holds.values().filter(|h| h.placed).map(|h| &h.row);
        let settled = self
            .holds
            .values()
            .filter(|h| h.settled && !h.placed)
            .map(|h| &h.row);
        (placed.collect(), settled.collect())
    }

    fn apply(&mut self, request: &Request) -> Answer {
        match request {
            Request::Debit(debit) => self.debit(debit).map(|o| Outcome {
                value: Reply::Payment(o.value),
                replayed: o.replayed,
            }),
            Request::TopUp(top_up) => self.top_up(top_up).map(|o| Outcome {
                value: Reply::TopUp(o.value),
                replayed: o.replayed,
            }),
            Request::Hold(hold) => self.place(hold).map(|o| Outcome {
                value: Reply::Hold(o.value),
                replayed: o.replayed,
            }),
            Request::Settle(settle) => self.settle(settle).map(|o| Outcome {
                value: Reply::Hold(o.value),
                replayed: o.replayed,
            }),
        }
    }

    fn place(&mut self, hold: &PlaceHold) -> Result<Outcome<HoldView>, ServiceError> {
        let currency = self.ctx.currency;
        if let Some(planned) = self.holds.get(hold.hold_id.as_str()) {
            return replay::recorded(PlaceHold::SCOPE, hold.matches(&planned.row), || {
                HoldView::as_placed(&planned.row, currency)
            });
        }
        let ctx = self.ctx;
        let (row, entry, event) =
            hold.place(funds(&mut self.balances, hold.user_id.as_str())?, ctx)?;
        self.entries.push(entry);
        self.events.push(event.into());
        let value = HoldView::as_placed(&row, currency);
        let planned = PlannedHold {
            row,
            placed: true,
            settled: false,
        };
        self.holds.insert(planned.row.hold_id.clone(), planned);
        Ok(Outcome {
            value,
            replayed: false,
        })
    }

    fn settle(&mut self, settle: &SettleHold) -> Result<Outcome<HoldView>, ServiceError> {
        let ctx = self.ctx;
        let funds = funds(&mut self.balances, settle.user_id.as_str())?;
        let planned = self
            .holds
            .get_mut(settle.hold_id.as_str())
            .filter(|h| h.row.user_id == settle.user_id.as_str())
            .ok_or(ServiceError::HoldNotFound)?;
        // Work on a copy: a refusal leaves the plan as it was.
        let mut row = planned.row.clone();
        let mut after = *funds;
        let settled = settle.settle(&mut row, &mut after, ctx)?;
        let value = HoldView::current(&row, ctx.currency);
        let Settled::Written(entry, event) = settled else {
            return replay::recorded(Command::scope(settle), true, || value);
        };
        *funds = after;
        planned.row = row;
        planned.settled = true;
        self.entries.push(entry);
        self.events.push(event.into());
        Ok(Outcome {
            value,
            replayed: false,
        })
    }

    fn debit(&mut self, debit: &Debit) -> Result<Outcome<PaymentView>, ServiceError> {
        let currency = self.ctx.currency;
        if let Some(row) = self.paid.get(debit.order_id.as_str()) {
            return replay::recorded(Debit::SCOPE, debit.matches(row), || {
                PaymentView::as_debited(row, currency)
            });
        }
        let ctx = self.ctx;
        let funds = funds(&mut self.balances, debit.user_id.as_str())?;
        let amount = debit.amount.value();
        if funds.available() < amount {
            return Err(ServiceError::InsufficientFunds);
        }
        funds.balance -= amount;
        let row = debit.row(funds.balance, ctx);
        self.entries.push(ledger::NewEntry::money(
            &row.user_id,
            ledger::EntryType::Payment,
            -amount,
            (funds.balance, funds.held),
            &row.order_id,
        ));
        self.events
            .push(payment_event(&row, PAYMENT_COMPLETED, ctx).into());
        let value = PaymentView::as_debited(&row, currency);
        self.paid.insert(row.order_id.clone(), row.clone());
        self.payments.push(row);
        Ok(Outcome {
            value,
            replayed: false,
        })
    }

    fn top_up(&mut self, top_up: &TopUp) -> Result<Outcome<TopUpView>, ServiceError> {
        let currency = self.ctx.currency;
        if let Some(row) = self.topped.get(top_up.top_up_id.as_str()) {
            return replay::recorded(TopUp::SCOPE, top_up.matches(row), || {
                TopUpView::new(row, currency)
            });
        }
        let ctx = self.ctx;
        let funds = funds(&mut self.balances, top_up.user_id.as_str())?;
        let amount = top_up.amount.value();
        if funds.balance + amount > balance_limit() {
            return Err(ServiceError::BalanceLimit);
        }
        funds.balance += amount;
        let row = top_up.row(funds.balance, ctx);
        self.entries.push(ledger::NewEntry::money(
            &row.user_id,
            ledger::EntryType::TopUp,
            amount,
            (funds.balance, funds.held),
            &row.top_up_id,
        ));
        let value = TopUpView::new(&row, currency);
        self.topped.insert(row.top_up_id.clone(), row.clone());
        self.top_ups.push(row);
        Ok(Outcome {
            value,
            replayed: false,
        })
    }
}

/// A hold the batch knows: read before it, or placed by it.
struct PlannedHold {
    row: HoldRow,
    /// Placed by this batch: inserted as it ends up.
    placed: bool,
    /// Settled by this batch.
    settled: bool,
}

/// The funds of the wallet `user_id` as the batch has left them so far.
fn funds<'a>(
    balances: &'a mut HashMap<String, (Funds, Funds)>,
    user_id: &str,
) -> Result<&'a mut Funds, ServiceError> {
    balances
        .get_mut(user_id)
        .map(|(_, after)| after)
        .ok_or(ServiceError::WalletNotFound)
}
