//! The batch's transaction: every wallet row locked once, the records under the batch's
//! keys read, each request decided in order by the money rules, one `UPDATE wallets`
//! for the net changes and one multi-row `INSERT` per table, one commit.

use rust_decimal::Decimal;

use crate::redis_support::RedisConnection;
use tokio::time::Instant;

use super::run::Batch;
use super::{Job, Request};
use crate::lock::BatchLocks;
use crate::store::{holds, ledger, orders, payments, refunds, top_ups, wallets};
use crate::telemetry::metrics;
use crate::wallet::attempt::Failure;
use crate::wallet::requests::Context;
use crate::wallet::rules::{Book, Funds, Records};

/// The Redis locks a batch holds and the connection that renews them.
pub(super) struct Held {
    pub locks: BatchLocks,
    pub conn: RedisConnection,
}

impl Batch<'_> {
    /// One transaction for `jobs`, each answered (in its ticket) when it commits.
    ///
    /// Under the batch's Redis locks, unless `careful`, it takes on trust what the lock
    /// and the claims established: a wallet whose last holder noted its funds at
    /// release, with no holder since, is not read (`lua/lib/acquire.lua`), and a key
    /// whose claim was fresh is not looked up before its insert. When that trust proves
    /// wrong it fails with [`Failure::Guessed`] and the next try is careful. A commit
    /// notes each wallet's funds for its next holder, on any instance.
    pub(super) async fn apply_batch(
        &self,
        jobs: &mut [&mut Job],
        mut held: Option<&mut Held>,
        careful: bool,
    ) -> Result<(), Failure> {
        let guessing = held.is_some() && !careful;
        let result = self.try_batch(jobs, held.as_deref_mut(), guessing).await;
        if let (Err(_), Some(held)) = (&result, held) {
            held.locks.leave_no_notes();
        }
        match result {
            // A duplicate key, or a wallet that was not as noted.
            Err(Failure::Retry(e)) if guessing => {
                tracing::debug!(error = %e, "a batch decided on trust did not hold");
                Err(Failure::Guessed)
            }
            other => other,
        }
    }

    async fn try_batch(
        &self,
        jobs: &mut [&mut Job],
        mut held: Option<&mut Held>,
        guessing: bool,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let mut tx = self.db.begin().await?;
        let mut user_ids: Vec<&str> = jobs.iter().map(|job| job.user_id()).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let wallet_count = user_ids.len();
        let mut funds: Vec<(String, Funds)> = Vec::with_capacity(wallet_count);
        if let Some(held) = held.as_deref().filter(|_| guessing) {
            user_ids.retain(|user_id| {
                match held.locks.found_note(user_id).and_then(Funds::from_note) {
                    Some(noted) => {
                        funds.push(((*user_id).to_owned(), noted));
                        false
                    }
                    None => true,
                }
            });
        }
        // The wallets decided from their last holder's note.
        let noted = funds.len();
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
        funds.extend(rows.into_iter().map(|row| {
            let read = Funds::of(&row);
            (row.user_id, read)
        }));
        // A key whose claim was fresh is new unless Redis lost it: its insert's unique
        // key says so, and the careful try then reads it.
        let trusted = |job: &Job| guessing && job.claim.is_some() && job.request.creates_own_key();
        // A payment and a hold are both keyed by their order id (one charge per order):
        // both are read under every order id of the batch.
        let order_ids = ids(jobs, |job| match &job.request {
            Request::Refund(t) => Some(&t.request.order_id),
            _ if trusted(job) => None,
            request => request.order_id(),
        });
        let top_up_ids = ids(jobs, |job| match &job.request {
            Request::TopUp(_) if !trusted(job) => Some(job.request.key()),
            _ => None,
        });
        let refund_ids = ids(jobs, |job| match &job.request {
            Request::Refund(_) if !trusted(job) => Some(job.request.key()),
            _ => None,
        });
        let records = Records {
            payments: payments::find_many(&mut tx, &order_ids).await?,
            top_ups: top_ups::find_many(&mut tx, &top_up_ids).await?,
            holds: holds::find_many(&mut tx, &order_ids).await?,
            refunds: refunds::find_many(&mut tx, &refund_ids).await?,
        };

        let ctx = Context {
            now: crate::support::clock::now(),
            currency: self.currency,
            points_rate: self.points_rate,
        };
        let mut book = Book::over(ctx, funds, records);
        // The earliest deadline of a request that writes: past it, nothing commits.
        let mut written_deadline: Option<Instant> = None;
        for job in jobs.iter_mut() {
            job.request.decide(&mut book);
            if job.request.wrote() {
                written_deadline =
                    Some(written_deadline.map_or(job.deadline, |d| d.min(job.deadline)));
            }
        }
        let trusted_any = noted > 0 || jobs.iter().any(|job| trusted(job));
        if trusted_any && jobs.iter().any(|job| job.request.is_refused()) {
            // A refusal writes nothing that would check it: it is decided again over
            // the rows and records themselves (a 402 may be a replay of a recorded
            // payment, a wallet may hold more than its note said).
            tx.rollback().await?;
            return Err(Failure::Guessed);
        }
        if book.is_empty() {
            tx.rollback().await?;
            leave_notes(&book, held);
            return Ok(());
        }

        let writes = book.writes();
        let fence = |user_id: &str| held.as_deref().and_then(|h| h.locks.fence(user_id));
        let mut deltas: Vec<wallets::Delta<'_>> = writes
            .deltas
            .iter()
            .map(|(user_id, before, change)| wallets::Delta {
                user_id,
                amount: change.balance,
                held: change.held,
                fence: fence(user_id),
                // Every wallet, noted or read: one statement shape per batch size
                // (MariaDB prepares each shape), and a read row holds them anyway.
                expected: Some((before.balance, before.held)),
            })
            .collect();
        // A noted wallet whose requests net to nothing (a payment and a top-up of the
        // same amount) is checked all the same: a row with no change, its conditions
        // those of the others (the rows matched are counted, changed or not).
        let from_note = |user_id: &str| {
            guessing
                && held
                    .as_deref()
                    .is_some_and(|h| h.locks.found_note(user_id).is_some())
        };
        let unchanged = book.funds_after().filter(|(user_id, _)| {
            from_note(user_id) && !writes.deltas.iter().any(|d| d.0 == *user_id)
        });
        deltas.extend(unchanged.map(|(user_id, funds)| wallets::Delta {
            user_id,
            amount: Decimal::ZERO,
            held: Decimal::ZERO,
            fence: fence(user_id),
            expected: Some((funds.balance, funds.held)),
        }));
        if !wallets::apply_deltas(&mut tx, &deltas, ctx.now).await? {
            return Err(Failure::conflict());
        }
        orders::insert_many(&mut tx, &writes.new_orders, ctx.now).await?;
        payments::insert_many(&mut tx, &writes.new_payments).await?;
        if !payments::update_many(&mut tx, &writes.changed_payments).await? {
            return Err(Failure::conflict());
        }
        refunds::insert_many(&mut tx, &writes.new_refunds).await?;
        top_ups::insert_many(&mut tx, &writes.new_top_ups).await?;
        holds::insert_many(&mut tx, &writes.new_holds).await?;
        if !holds::settle_many(&mut tx, &writes.settled).await? {
            return Err(Failure::conflict());
        }
        ledger::append_many(&mut tx, writes.entries, ctx.now).await?;
        crate::outbox::append_many(&mut tx, writes.events, ctx.now).await?;

        if let Some(held) = held.as_deref_mut() {
            let renewed = self.lock.renew_batch(&mut held.conn, &mut held.locks).await;
            if !matches!(renewed, Ok(true)) {
                tx.rollback().await?;
                return Err(Failure::LeaseLost);
            }
        }
        if written_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            // The next attempt answers the late requests and applies the others.
            tx.rollback().await?;
            return Err(Failure::Retry(anyhow::anyhow!("a request ran out of time")));
        }
        tx.commit().await?;
        leave_notes(&book, held);
        if !writes.events.is_empty() {
            self.outbox_wake.notify_one();
        }
        metrics::transaction("batch", started.elapsed());
        metrics::batch(jobs.len(), wallet_count);
        Ok(())
    }
}

/// Notes the funds `book` leaves for each wallet's next holder: what the commit wrote,
/// or what was read when nothing was written.
fn leave_notes(book: &Book, held: Option<&mut Held>) {
    if let Some(held) = held {
        for (user_id, funds) in book.funds_after() {
            held.locks.leave_note(user_id, funds.note());
        }
    }
}

/// The ids `id` picks of the jobs, each once, in order.
fn ids<'a>(
    jobs: &'a [&mut Job],
    id: impl Fn(&'a Job) -> Option<&'a crate::domain::Identifier>,
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = jobs
        .iter()
        .filter_map(|job| id(job))
        .map(|key| key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
