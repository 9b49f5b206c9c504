//! Group commit: the debits, top-ups and hold requests queued in this process are applied together, one
//! transaction per batch, under the Redis locks of the batch's wallets.
//!
//! Requests go into one queue. A dispatcher takes what is queued, at most
//! `WALLET_BATCH_MAX` commands and never a wallet that a running batch already has, and
//! runs the batch:
//!
//! 1. one Redis round trip claims every idempotency key of the batch; a key already
//!    answered is replayed from the cache at once, one in progress is a 409;
//! 2. one round trip takes the locks of all its wallets, each with its fencing token;
//!    a wallet another process holds is left out and queued again until it is released;
//! 3. one MySQL transaction locks the wallet rows in key order, reads the orders and
//!    top-ups already recorded, checks each command in order against its wallet's
//!    running balance, then writes one `UPDATE wallets` for every wallet's net change
//!    (with each fencing check) and one multi-row `INSERT` per table;
//! 4. one round trip caches the replies, one releases the locks, and every caller is
//!    answered.
//!
//! There is no linger: a lone request is a batch of one as soon as it is queued, and a
//! busy wallet's requests pile up behind its running batch and go together in the next.
//! While Redis is unavailable the same batches run on row locks alone.

mod apply;
mod run;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::commands::{Command, Debit, TopUp};
use super::holds::{PlaceHold, SettleHold};
use super::views::{HoldView, PaymentView, TopUpView};
use super::{unavailable, Outcome, ServiceError, WalletService};
use crate::domain::Identifier;
use crate::idempotency::ClaimToken;

/// How many batches one process runs at once: while one waits for MySQL, the next
/// talks to Redis. More would only split what one batch carries.
const IN_FLIGHT: usize = 2;

/// A command the batches carry.
pub enum Request {
    Debit(Debit),
    TopUp(TopUp),
    Hold(PlaceHold),
    /// A capture or void.
    Settle(SettleHold),
}

/// Its answer.
#[derive(Debug)]
pub enum Reply {
    Payment(PaymentView),
    TopUp(TopUpView),
    Hold(HoldView),
}

/// What a caller gets back.
pub type Answer = Result<Outcome<Reply>, ServiceError>;

impl Request {
    /// The command inside, as the idempotency claim and the lock see it.
    fn command(&self) -> &dyn Keyed {
        match self {
            Self::Debit(debit) => debit,
            Self::TopUp(top_up) => top_up,
            Self::Hold(hold) => hold,
            Self::Settle(settle) => settle,
        }
    }

    fn scope(&self) -> &'static str {
        self.command().scope()
    }

    fn key(&self) -> &Identifier {
        self.command().key()
    }

    fn user_id(&self) -> &Identifier {
        self.command().user_id()
    }

    fn fingerprint(&self) -> String {
        self.command().fingerprint()
    }

    /// The answer cached for this request's key.
    fn cached(&self, reply: &str) -> serde_json::Result<Reply> {
        Ok(match self {
            Self::Debit(_) => Reply::Payment(serde_json::from_str(reply)?),
            Self::TopUp(_) => Reply::TopUp(serde_json::from_str(reply)?),
            Self::Hold(_) | Self::Settle(_) => Reply::Hold(serde_json::from_str(reply)?),
        })
    }
}

/// What the queue reads of a command: [`Command`] without its associated types, so the
/// four kinds of request answer through one reference.
trait Keyed: Send + Sync {
    fn scope(&self) -> &'static str;
    fn key(&self) -> &Identifier;
    fn user_id(&self) -> &Identifier;
    fn fingerprint(&self) -> String;
}

impl<C: Command> Keyed for C {
    fn scope(&self) -> &'static str {
        Command::scope(self)
    }

    fn key(&self) -> &Identifier {
        Command::key(self)
    }

    fn user_id(&self) -> &Identifier {
        Command::user_id(self)
    }

    fn fingerprint(&self) -> String {
        Command::fingerprint(self)
    }
}

impl Reply {
    fn to_json(&self) -> serde_json::Result<String> {
        match self {
            Self::Payment(view) => serde_json::to_string(view),
            Self::TopUp(view) => serde_json::to_string(view),
            Self::Hold(view) => serde_json::to_string(view),
        }
    }
}

/// A queued request and its caller.
struct Job {
    request: Request,
    fingerprint: String,
    /// Past it nothing commits (503 `request_timeout`).
    deadline: Instant,
    /// Past it the request stops waiting for its wallet (503 `lock_timeout`).
    lock_deadline: Instant,
    /// Not tried again before then (its wallet was held elsewhere).
    ready_at: Instant,
    /// Its wallet was held by another process: a release announcement makes it ready.
    held_elsewhere: bool,
    /// The count of release announcements before its wallet was found held: a higher
    /// count when it is queued again means the announcement may have been missed.
    releases_seen: u64,
    /// Its idempotency claim, once taken; kept while the job waits for its wallet.
    claim: Option<ClaimToken>,
    /// Batches that lost their lease before committing this job.
    lost_leases: u32,
    caller: oneshot::Sender<Answer>,
}

impl Job {
    fn answer(self, answer: Answer) {
        // The caller may have gone (its connection closed): the answer stands anyway.
        let _ = self.caller.send(answer);
    }

    fn user_id(&self) -> &str {
        self.request.user_id().as_str()
    }
}

/// What a finished batch hands back to the dispatcher.
#[derive(Default)]
struct Finished {
    /// Jobs to queue again: their wallet was held elsewhere or the lease was lost.
    retry: Vec<Job>,
    /// Wallets another process waits for: this process stands back for a moment.
    yielded: Vec<Identifier>,
}

/// The queue in front of the batches; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// The queue and its dispatcher, which the application runs as a task: it ends once
    /// every `Batcher` is gone and what was queued is answered. `service` must not hold
    /// a `Batcher` itself.
    pub fn new(
        service: WalletService,
        max: usize,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (jobs, incoming) = mpsc::unbounded_channel();
        (Self { jobs }, dispatch(service, incoming, max.max(1)))
    }

    /// Queues `request` and waits for its answer.
    pub async fn submit(&self, request: Request, deadline: Instant, lock_wait: Duration) -> Answer {
        let (caller, answer) = oneshot::channel();
        let now = Instant::now();
        let job = Job {
            fingerprint: request.fingerprint(),
            request,
            deadline,
            lock_deadline: (now + lock_wait).min(deadline),
            ready_at: now,
            held_elsewhere: false,
            releases_seen: 0,
            claim: None,
            lost_leases: 0,
            caller,
        };
        if self.jobs.send(job).is_err() {
            return Err(unavailable(anyhow::anyhow!(
                "the batch committer has stopped"
            )));
        }
        answer.await.unwrap_or_else(|_| {
            Err(unavailable(anyhow::anyhow!(
                "a batch ended without an answer"
            )))
        })
    }
}

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
    fn take_batch(&mut self, max: usize, now: Instant) -> Vec<Job> {
        let mut batch = Vec::new();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        for job in self.waiting.drain(..) {
            let user_id = job.user_id();
            if batch.len() < max
                && job.ready_at <= now
                && !self.busy.contains(user_id)
                && !blocked.contains(user_id)
            {
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

async fn dispatch(service: WalletService, mut incoming: mpsc::UnboundedReceiver<Job>, max: usize) {
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
            expiring.spawn(service.clone().expire(expired));
        }
        while expiring.try_join_next().is_some() {}
        while running.len() < IN_FLIGHT {
            let batch = queue.take_batch(max, now);
            if batch.is_empty() {
                break;
            }
            let wallets: Vec<String> = batch.iter().map(|job| job.user_id().to_owned()).collect();
            queue.busy.extend(wallets.iter().cloned());
            let id = running.spawn(service.clone().run(batch)).id();
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
                Ok((id, finished)) => queue.finish(id, Some(finished), service.lock.release_count()),
                Err(e) => {
                    tracing::error!(error = %e, "a batch failed");
                    queue.finish(e.id(), None, 0);
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            _ = service.lock.any_release() => queue.wake_held(Instant::now()),
        }
    }
}
