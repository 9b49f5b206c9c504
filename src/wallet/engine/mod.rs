//! The engine: every money movement — debits, top-ups, cancels, holds and their
//! settlements, expiries included — is applied in a batch (group commit), one
//! transaction per batch, under the Redis locks of the batch's wallets.
//!
//! Requests go into one queue. A dispatcher takes what is queued, at most
//! `WALLET_BATCH_MAX` requests and never a wallet that a running batch already has, and
//! runs the batch:
//!
//! 1. one Redis round trip claims every idempotency key of the batch and takes the
//!    locks of all its wallets, each with its fencing token
//!    ([`crate::lock::WalletLock::begin_batch`]); a key already answered is replayed
//!    from the cache at once, one in progress is a 409; a wallet another process holds
//!    is left out and queued again until it is released;
//! 2. one MySQL transaction locks the wallet rows in key order, reads the payments,
//!    top-ups and holds already recorded under the batch's keys, lets the money rules
//!    ([`super::rules`]) decide each request in order, then writes one `UPDATE wallets`
//!    for every wallet's net change (with each fencing check) and one multi-row
//!    `INSERT` per table. Under Redis locks it skips the reads the locks and claims
//!    made needless: a wallet whose last holder (on any instance) noted its funds in
//!    the lock's fence key at release, with no holder since, is decided from that
//!    note, and a key whose claim was fresh is not looked up; the `UPDATE`'s
//!    conditions and the unique keys check both, and the batch runs again reading when
//!    either was wrong;
//! 3. one round trip caches the replies, releases the locks and leaves each committed
//!    wallet's funds in its note ([`crate::lock::WalletLock::finish_batch`]), and every
//!    caller is answered.
//!
//! There is no linger: a lone request is a batch of one as soon as it is queued, and a
//! busy wallet's requests pile up behind its running batch and go together in the next.
//! `WALLET_BATCH_MAX=1` makes every batch a batch of one. While Redis is unavailable the
//! same batches run on row locks alone.

mod queue;
mod run;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::replay::{self, Claimed};
use super::requests::{CancelPayment, Debit, Keyed, PlaceHold, Refund, SettleHold, TopUp};
use super::rules::{Answer, Book};
use super::views::{HoldView, PaymentView, RefundView, TopUpView};
use super::{unavailable, ServiceError, WalletCore};
use crate::domain::Identifier;
use crate::idempotency::{CacheKey, Claim, ClaimToken};

/// A request and its caller, who waits for an answer of the request's own type.
pub struct Ticket<R, T> {
    request: R,
    /// Decided by the claim or by the rules; sent when the batch ends.
    answer: Option<Answer<T>>,
    caller: oneshot::Sender<Answer<T>>,
}

impl<R, T: serde::Serialize + serde::de::DeserializeOwned> Ticket<R, T> {
    /// The reply to cache for the key, once the request was answered.
    fn reply(&self) -> Option<String> {
        match &self.answer {
            Some(Ok(outcome)) => serde_json::to_string(&outcome.value).ok(),
            _ => None,
        }
    }

    /// True when the answer is a change written by this batch, not a replay.
    fn wrote(&self) -> bool {
        matches!(&self.answer, Some(Ok(outcome)) if !outcome.replayed)
    }

    /// Reads the request's idempotency claim: the token when the key is ours, else
    /// the answer the claim gives (cached, in progress, reused).
    fn claimed(&mut self, scope: &'static str, claim: Claim) -> Option<ClaimToken> {
        match replay::claimed(scope, claim, |reply| serde_json::from_str(reply)) {
            Claimed::Ours(token) => Some(token),
            Claimed::Answered(answer) => {
                self.answer = Some(answer);
                None
            }
        }
    }

    fn send(self) {
        let answer = self.answer.unwrap_or_else(|| {
            Err(unavailable(anyhow::anyhow!(
                "a batch ended without an answer"
            )))
        });
        // The caller may have gone (its connection closed): the answer stands anyway.
        let _ = self.caller.send(answer);
    }
}

/// Every kind of request the batches carry, each with its own answer type.
pub enum Request {
    Debit(Ticket<Debit, PaymentView>),
    TopUp(Ticket<TopUp, TopUpView>),
    Cancel(Ticket<CancelPayment, PaymentView>),
    Refund(Ticket<Refund, RefundView>),
    Hold(Ticket<PlaceHold, HoldView>),
    /// A capture, void or expiry.
    Settle(Ticket<SettleHold, HoldView>),
}

/// Runs `$body` on the ticket inside `$request`, whatever its kind.
macro_rules! each {
    ($request:expr, $ticket:ident => $body:expr) => {
        match $request {
            Request::Debit($ticket) => $body,
            Request::TopUp($ticket) => $body,
            Request::Cancel($ticket) => $body,
            Request::Refund($ticket) => $body,
            Request::Hold($ticket) => $body,
            Request::Settle($ticket) => $body,
        }
    };
}

impl Request {
    /// The request inside, as the idempotency claim and the lock see it.
    fn keyed(&self) -> &dyn Keyed {
        each!(self, t => &t.request)
    }

    fn scope(&self) -> &'static str {
        self.keyed().scope()
    }

    fn key(&self) -> &Identifier {
        self.keyed().key()
    }

    /// The request's entry in the idempotency cache.
    fn cache_key(&self) -> CacheKey<'_> {
        let keyed = self.keyed();
        CacheKey {
            tag: keyed.cache_tag(),
            scope: keyed.scope(),
            id: keyed.key(),
        }
    }

    /// The order whose payment or hold the request reads, if any: its key, but a
    /// refund's order.
    fn order_id(&self) -> Option<&Identifier> {
        match self {
            Self::Refund(t) => Some(&t.request.order_id),
            Self::TopUp(_) => None,
            Self::Debit(_) | Self::Cancel(_) | Self::Hold(_) | Self::Settle(_) => Some(self.key()),
        }
    }

    fn user_id(&self) -> &Identifier {
        self.keyed().user_id()
    }

    /// True when the request makes the record its key names (a payment, top-up, hold
    /// or refund), so a fresh claim of the key says the record is not there yet.
    fn creates_own_key(&self) -> bool {
        match self {
            Self::Debit(_) | Self::TopUp(_) | Self::Hold(_) | Self::Refund(_) => true,
            Self::Cancel(_) | Self::Settle(_) => false,
        }
    }

    /// True when the request was answered with a refusal or an error.
    fn is_refused(&self) -> bool {
        each!(self, t => matches!(t.answer, Some(Err(_))))
    }

    fn is_answered(&self) -> bool {
        each!(self, t => t.answer.is_some())
    }

    fn reply(&self) -> Option<String> {
        each!(self, t => t.reply())
    }

    fn wrote(&self) -> bool {
        each!(self, t => t.wrote())
    }

    fn fail(&mut self, error: ServiceError) {
        each!(self, t => t.answer = Some(Err(error)))
    }

    /// Forgets an answer decided in a transaction that did not commit.
    fn undecide(&mut self) {
        each!(self, t => t.answer = None)
    }

    fn claimed(&mut self, claim: Claim) -> Option<ClaimToken> {
        let scope = self.scope();
        each!(self, t => t.claimed(scope, claim))
    }

    /// Lets the money rules decide this request in `book`.
    fn decide(&mut self, book: &mut Book) {
        match self {
            Self::Debit(t) => t.answer = Some(book.debit(&t.request)),
            Self::TopUp(t) => t.answer = Some(book.top_up(&t.request)),
            Self::Cancel(t) => t.answer = Some(book.cancel(&t.request)),
            Self::Refund(t) => t.answer = Some(book.refund(&t.request)),
            Self::Hold(t) => t.answer = Some(book.hold(&t.request)),
            Self::Settle(t) => t.answer = Some(book.settle(&t.request)),
        }
    }

    fn send(self) {
        each!(self, t => t.send())
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
    /// Its wallet's lock was lost in this batch: queue it again, claim kept.
    requeue: bool,
}

impl Job {
    /// Answers the caller with `error`.
    fn refuse(mut self, error: ServiceError) {
        self.request.fail(error);
        self.request.send();
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
pub struct Engine {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Engine {
    /// The queue and its dispatcher, which the application runs as a task: it ends once
    /// every `Engine` is gone and what was queued is answered.
    pub fn new(
        core: Arc<WalletCore>,
        max: usize,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (jobs, incoming) = mpsc::unbounded_channel();
        (Self { jobs }, queue::dispatch(core, incoming, max.max(1)))
    }

    /// Queues `request` (made a [`Request`] by `kind`) and waits for its answer.
    pub async fn submit<R: Keyed, T>(
        &self,
        request: R,
        kind: fn(Ticket<R, T>) -> Request,
        deadline: Instant,
        lock_wait: Duration,
    ) -> Answer<T> {
        let (caller, answer) = oneshot::channel();
        let now = Instant::now();
        let job = Job {
            fingerprint: request.fingerprint(),
            request: kind(Ticket {
                request,
                answer: None,
                caller,
            }),
            deadline,
            lock_deadline: (now + lock_wait).min(deadline),
            ready_at: now,
            held_elsewhere: false,
            releases_seen: 0,
            claim: None,
            lost_leases: 0,
            requeue: false,
        };
        if self.jobs.send(job).is_err() {
            return Err(unavailable(anyhow::anyhow!("the engine has stopped")));
        }
        answer.await.unwrap_or_else(|_| {
            Err(unavailable(anyhow::anyhow!(
                "a batch ended without an answer"
            )))
        })
    }
}
