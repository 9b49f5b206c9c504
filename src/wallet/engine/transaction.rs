//! The batch's transaction: every wallet row locked once, the records under the batch's
//! keys read, each request decided in order by the money rules, one `UPDATE wallets`
//! for the net changes and one multi-row `INSERT` per table, one commit.

use crate::redis_support::RedisConnection;
use tokio::time::Instant;

use super::run::Batch;
use super::{Job, Request};
use crate::lock::BatchLocks;
use crate::store::{holds, ledger, orders, payments, refunds, top_ups, wallets};
use crate::telemetry::metrics;
use crate::wallet::attempt::Failure;
use crate::wallet::requests::Context;
use crate::wallet::rules::{Book, Records};

/// The Redis locks a batch holds and the connection that renews them.
pub(super) struct Held {
    pub locks: BatchLocks,
    pub conn: RedisConnection,
}

impl Batch<'_> {
    /// One transaction for `jobs`, each answered (in its ticket) when it commits.
    pub(super) async fn apply_batch(
        &self,
        jobs: &mut [&mut Job],
        held: Option<&mut Held>,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let mut tx = self.db.begin().await?;
        let mut user_ids: Vec<&str> = jobs.iter().map(|job| job.user_id()).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let rows = wallets::lock_many(&mut tx, &user_ids).await?;
        let wallet_count = user_ids.len();
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
        // A payment and a hold are both keyed by their order id (one charge per order):
        // both are read under every order id of the batch.
        let order_ids = ids(jobs, Request::order_id);
        let top_up_ids = ids(jobs, |r| match r {
            Request::TopUp(_) => Some(r.key()),
            _ => None,
        });
        let refund_ids = ids(jobs, |r| match r {
            Request::Refund(_) => Some(r.key()),
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
        let mut book = Book::new(ctx, rows, records);
        // The earliest deadline of a request that writes: past it, nothing commits.
        let mut written_deadline: Option<Instant> = None;
        for job in jobs.iter_mut() {
            job.request.decide(&mut book);
            if job.request.wrote() {
                written_deadline =
                    Some(written_deadline.map_or(job.deadline, |d| d.min(job.deadline)));
            }
        }
        if book.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }

        let writes = book.writes();
        let fence = |user_id: &str| held.as_deref().and_then(|h| h.locks.fence(user_id));
        let deltas: Vec<wallets::Delta<'_>> = writes
            .deltas
            .iter()
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

        if let Some(held) = held {
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
        if !writes.events.is_empty() {
            self.outbox_wake.notify_one();
        }
        metrics::transaction("batch", started.elapsed());
        metrics::batch(jobs.len(), wallet_count);
        Ok(())
    }
}

/// The ids `id` picks of the jobs, each once, in order.
fn ids<'a>(
    jobs: &'a [&mut Job],
    id: impl Fn(&'a Request) -> Option<&'a crate::domain::Identifier>,
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = jobs
        .iter()
        .filter_map(|job| id(&job.request))
        .map(|key| key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
