//! The batch's transaction: every wallet row locked once, each command checked in order
//! against its wallet's running balance, one `UPDATE wallets` for the net changes and
//! one multi-row `INSERT` per table, one commit.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use rust_decimal::Decimal;
use tokio::time::Instant;

use super::{Answer, Job, Reply, Request};
use crate::domain::events::{PaymentEvent, PAYMENT_COMPLETED};
use crate::lock::BatchLocks;
use crate::store::{ledger, payments, top_ups, wallets};
use crate::telemetry::metrics;
use crate::wallet::attempt::Failure;
use crate::wallet::commands::{payment_event, Command, Debit, TopUp, TxContext};
use crate::wallet::replay;
use crate::wallet::views::{PaymentView, TopUpView};
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
        let paid = payments::find_many(&mut tx, &order_ids).await?;
        let topped = top_ups::find_many(&mut tx, &top_up_ids).await?;

        let ctx = TxContext {
            fence: None,
            now: crate::support::clock::now(),
            currency: self.currency,
            points_rate: self.points_rate,
        };
        let mut plan = Plan::new(&ctx, rows, paid, topped);
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
            .map(|(user_id, amount)| wallets::Delta {
                user_id,
                amount,
                fence: fence(user_id),
            })
            .collect();
        if !wallets::apply_deltas(&mut tx, &deltas, ctx.now).await? {
            return Err(Failure::conflict());
        }
        payments::insert_many(&mut tx, &plan.payments).await?;
        top_ups::insert_many(&mut tx, &plan.top_ups).await?;
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
    /// Each locked wallet's balance before the batch and as the batch leaves it.
    balances: HashMap<String, (Decimal, Decimal)>,
    /// Orders and top-ups recorded before the batch or by an earlier command of it.
    paid: HashMap<String, payments::PaymentRow>,
    topped: HashMap<String, top_ups::TopUpRow>,
    payments: Vec<payments::PaymentRow>,
    top_ups: Vec<top_ups::TopUpRow>,
    entries: Vec<ledger::NewEntry>,
    events: Vec<PaymentEvent>,
    /// The earliest deadline of a command that writes.
    written_deadline: Option<Instant>,
}

impl<'c> Plan<'c> {
    fn new(
        ctx: &'c TxContext,
        rows: Vec<wallets::WalletRow>,
        paid: Vec<payments::PaymentRow>,
        topped: Vec<top_ups::TopUpRow>,
    ) -> Self {
        Self {
            ctx,
            balances: rows
                .into_iter()
                .map(|row| (row.user_id, (row.balance, row.balance)))
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

    /// Every wallet whose balance the batch changes, with the net change.
    fn deltas(&self) -> impl Iterator<Item = (&str, Decimal)> {
        self.balances
            .iter()
            .filter(|(_, (before, after))| before != after)
            .map(|(user_id, (before, after))| (user_id.as_str(), after - before))
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
        }
    }

    fn debit(&mut self, debit: &Debit) -> Result<Outcome<PaymentView>, ServiceError> {
        let currency = self.ctx.currency;
        if let Some(row) = self.paid.get(debit.order_id.as_str()) {
            return replay::recorded(Debit::SCOPE, debit.matches(row), || {
                PaymentView::as_debited(row, currency)
            });
        }
        let (_, balance) = self
            .balances
            .get_mut(debit.user_id.as_str())
            .ok_or(ServiceError::WalletNotFound)?;
        let amount = debit.amount.value();
        if *balance < amount {
            return Err(ServiceError::InsufficientFunds);
        }
        *balance -= amount;
        let row = debit.row(*balance, self.ctx);
        self.entries.push(ledger::NewEntry {
            user_id: row.user_id.clone(),
            entry_type: ledger::EntryType::Payment,
            amount: -amount,
            balance_after: row.balance_after,
            reference: row.order_id.clone(),
        });
        self.events
            .push(payment_event(&row, PAYMENT_COMPLETED, self.ctx));
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
        let (_, balance) = self
            .balances
            .get_mut(top_up.user_id.as_str())
            .ok_or(ServiceError::WalletNotFound)?;
        let amount = top_up.amount.value();
        if *balance + amount > balance_limit() {
            return Err(ServiceError::BalanceLimit);
        }
        *balance += amount;
        let row = top_up.row(*balance, self.ctx);
        self.entries.push(ledger::NewEntry {
            user_id: row.user_id.clone(),
            entry_type: ledger::EntryType::TopUp,
            amount,
            balance_after: row.balance_after,
            reference: row.top_up_id.clone(),
        });
        let value = TopUpView::new(&row, currency);
        self.topped.insert(row.top_up_id.clone(), row.clone());
        self.top_ups.push(row);
        Ok(Outcome {
            value,
            replayed: false,
        })
    }
}
