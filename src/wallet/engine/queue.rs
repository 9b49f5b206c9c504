//! The queue in front of the batches: which jobs go together, which wait for their
//! wallet, and the dispatcher that runs the batches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{run, Finished, Job};
use crate::wallet::WalletCore;

/// How many batches one process runs at once: while one waits for MySQL, the next
/// talks to Redis. More would only split what one batch carries.
const IN_FLIGHT: usize = 2;

/// The jobs waiting for a batch, and the wallets running batches have.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Job>,
    busy: HashSet<String>,
    /// The wallets of each running batch, so they are freed even if it panics.
    running: HashMap<tokio::task::Id, Vec<String>>,
}

impl Queue {
    /// Takes the jobs that waited for their wallet past their lock deadline.
    fn take_expired(&mut self, now: Instant) -> Vec<Job> {
        let mut expired = Vec::new();
        for job in std::mem::take(&mut self.waiting) {
            if job.lock_deadline <= now {
                expired.push(job);
            } else {
                self.waiting.push_back(job);
            }
        }
        expired
    }

    /// The next batch: ready jobs, oldest first, of wallets no running batch has, at
    /// most `max`. A wallet's jobs stay in order: once one of them waits, all do.
    ///
    /// An idempotency key goes into a batch once: a later request with a key the batch
    /// has already waits for the next one, where it meets the earlier request's claim
    /// (in progress, or answered). In one batch the later request would run without a
    /// claim of its own, even when the earlier one does not run (its wallet held
    /// elsewhere), and could take the key on its own terms.
    fn take_batch(&mut self, max: usize, now: Instant) -> Vec<Job> {
        let mut batch = Vec::new();
        let mut keys: HashSet<(&'static str, String)> = HashSet::new();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        for job in self.waiting.drain(..) {
            let user_id = job.user_id();
            let key = (job.request.scope(), job.request.key().to_string());
            if batch.len() < max
                && job.ready_at <= now
                && !self.busy.contains(user_id)
                && !blocked.contains(user_id)
                && !keys.contains(&key)
            {
                keys.insert(key);
                batch.push(job);
            } else {
                blocked.insert(user_id.to_owned());
                rest.push_back(job);
            }
        }
        self.waiting = rest;
        batch
    }

    /// When the dispatcher has to look again without being woken: the earliest time a
    /// job becomes ready or runs out of its lock wait.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.waiting
            .iter()
            .map(|job| {
                if job.ready_at > now {
                    job.ready_at.min(job.lock_deadline)
                } else {
                    job.lock_deadline
                }
            })
            .min()
    }

    fn finish(&mut self, id: tokio::task::Id, finished: Option<Finished>, releases: u64) {
        for user_id in self.running.remove(&id).unwrap_or_default() {
            self.busy.remove(&user_id);
        }
        let Some(finished) = finished else { return };
        let now = Instant::now();
        for mut job in finished.retry.into_iter().rev() {
            if job.held_elsewhere && releases > job.releases_seen {
                // A release was announced while the batch ran: try again now.
                job.held_elsewhere = false;
                job.ready_at = now;
            }
            self.waiting.push_front(job);
        }
        let until = Instant::now() + crate::lock::YIELD;
        for user_id in &finished.yielded {
            for job in self
                .waiting
                .iter_mut()
                .filter(|job| job.user_id() == user_id.as_str())
            {
                job.ready_at = job.ready_at.max(until);
            }
        }
    }

    /// A lock was released somewhere: jobs waiting for a wallet held elsewhere try again.
    fn wake_held(&mut self, now: Instant) {
        for job in self.waiting.iter_mut().filter(|job| job.held_elsewhere) {
            job.held_elsewhere = false;
            job.ready_at = job.ready_at.min(now);
        }
    }
}

pub(super) async fn dispatch(
    core: Arc<WalletCore>,
    mut incoming: mpsc::UnboundedReceiver<Job>,
    max: usize,
) {
    let mut queue = Queue::default();
    let mut running: JoinSet<Finished> = JoinSet::new();
    // Answers to requests that waited too long for their wallet.
    let mut expiring: JoinSet<()> = JoinSet::new();
    let mut open = true;
    loop {
        while let Ok(job) = incoming.try_recv() {
            queue.waiting.push_back(job);
        }
        let now = Instant::now();
        let expired = queue.take_expired(now);
        if !expired.is_empty() {
            expiring.spawn(run::expire(core.clone(), expired));
        }
        while expiring.try_join_next().is_some() {}
        while running.len() < IN_FLIGHT {
            let batch = queue.take_batch(max, now);
            if batch.is_empty() {
                break;
            }
            let wallets: Vec<String> = batch.iter().map(|job| job.user_id().to_owned()).collect();
            queue.busy.extend(wallets.iter().cloned());
            let id = running.spawn(run::run(core.clone(), batch)).id();
            queue.running.insert(id, wallets);
        }
        if !open && queue.waiting.is_empty() && running.is_empty() {
            while expiring.join_next().await.is_some() {}
            return;
        }
        let wake = queue.next_wake(now);
        tokio::select! {
            job = incoming.recv(), if open => match job {
                Some(job) => queue.waiting.push_back(job),
                None => open = false,
            },
            Some(done) = running.join_next_with_id() => match done {
                Ok((id, finished)) => queue.finish(id, Some(finished), core.lock.release_count()),
                Err(e) => {
                    tracing::error!(error = %e, "a batch failed");
                    queue.finish(e.id(), None, 0);
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            _ = core.lock.any_release() => queue.wake_held(Instant::now()),
        }
    }
}
