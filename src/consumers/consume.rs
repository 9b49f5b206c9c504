//! The consume loop every consumer shares: handle a record, wait for a request in
//! flight that it depends on, retry transient failures with backoff, send what keeps
//! failing to the dead-letter topic, then commit.
//!
//! A handler that can apply many records in one go ([`RecordHandler::handle_batch`])
//! gets every record already waiting (up to [`MAX_BATCH`]) at once, and the loop commits
//! their offsets once. If the batch fails, nothing of it was applied and its records
//! go through the one-by-one path above, so a poison record is dead-lettered alone.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::dead_letters::publish::{DeadLetterPublisher, Failure};
use crate::kafka::wakeups::IdleFetch;
use crate::kafka::WalletConsumer;
use crate::support::backoff::backoff;
use crate::support::tasks::StopSignal;
use crate::telemetry::metrics;

/// Why a record was not handled.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never succeed (unreadable, invalid): dead-letter it at once.
    #[error("{0}")]
    Poison(String),
    /// It may succeed later: retry, then dead-letter.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
    /// Another request for the same thing is being applied right now (the same order
    /// paid through the API at this moment): wait for it to finish, up to
    /// [`RetryPolicy::in_flight_wait`], then handle the record again. Its outcome
    /// decides this record's, so giving up after the short transient budget would
    /// dead-letter a record that was about to have an answer.
    #[error("{0}")]
    InFlight(String),
}

/// The record's payload as JSON of type `T`; an empty or unreadable one is poison.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    record: &OwnedMessage,
    what: &str,
) -> Result<T, HandlerError> {
    let payload = record
        .payload()
        .ok_or_else(|| HandlerError::Poison("the record has no payload".into()))?;
    serde_json::from_slice(payload).map_err(|e| HandlerError::Poison(format!("not {what}: {e}")))
}

/// Applies one record. Must be idempotent: a record is redelivered when the process
/// stops between the effect and the commit.
pub trait RecordHandler: Send + Sync {
    fn handle(
        &self,
        record: &OwnedMessage,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies `records` all or nothing, in one go. `None`: this handler does not
    /// batch, and the loop handles each record on its own.
    fn handle_batch(
        &self,
        records: &[OwnedMessage],
    ) -> impl Future<Output = Option<anyhow::Result<()>>> + Send {
        let _ = records;
        std::future::ready(None)
    }
}

/// Most records one batch takes: what the queue already holds, never more.
const MAX_BATCH: usize = 500;

/// How a consume loop retries.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per record before a transient failure is dead-lettered.
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// How long a record waits for a request in flight ([`HandlerError::InFlight`])
    /// before that counts as a transient failure: the idempotency claim's TTL, the
    /// longest an unfinished request can hold its key.
    pub in_flight_wait: Duration,
}

/// How often a record waiting for a request in flight tries again: such a request
/// usually ends within milliseconds, and a try costs one Redis call.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(100);

/// How long a stopping consumer waits to have left its group; a close that takes longer
/// goes on in the background ([`WalletConsumer::close`]).
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Consumes until told to stop; the record or batch in hand is finished (or, stopped
/// mid-retry, left uncommitted for redelivery) first. Then the consumer leaves its
/// group. With `idle`, it stops fetching while it has nothing to do
/// ([`crate::kafka::wakeups`]).
pub async fn consume<H: RecordHandler>(
    name: &'static str,
    consumer: WalletConsumer,
    handler: H,
    dead_letters: DeadLetterPublisher,
    retry: RetryPolicy,
    idle: Option<IdleFetch>,
    stop: StopSignal,
) {
    tracing::info!(consumer = name, "consumer started");
    let fetching = Fetching::new(name, idle);
    consume_until_stopped(
        name,
        &consumer,
        handler,
        dead_letters,
        retry,
        fetching,
        stop,
    )
    .await;
    if !consumer.close(CLOSE_WITHIN).await {
        tracing::warn!(consumer = name, within = ?CLOSE_WITHIN, "the consumer did not leave its group in time");
    }
    tracing::info!(consumer = name, "consumer stopped");
}

/// Receive errors, logged at most once a second per consumer with the count of those
/// left out since: a broker outage queues one per failed connection attempt.
#[derive(Default)]
struct ReceiveErrors {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl ReceiveErrors {
    fn seen(&mut self, name: &'static str, error: &rdkafka::error::KafkaError) {
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !due {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(consumer = name, error = %error, more = self.unlogged, "kafka receive failed");
        self.last_logged = Some(std::time::Instant::now());
        self.unlogged = 0;
    }
}

/// Takes the receive errors already queued, without waiting; the first record found
/// behind them, if any.
fn drain_errors(
    name: &'static str,
    consumer: &WalletConsumer,
    errors: &mut ReceiveErrors,
) -> Option<OwnedMessage> {
    loop {
        match consumer.recv().now_or_never()? {
            Ok(message) => return Some(message.detach()),
            Err(e) => errors.seen(name, &e),
        }
    }
}

/// Whether a consumer fetches, and until when ([`crate::kafka::wakeups`]).
struct Fetching {
    name: &'static str,
    idle: Option<IdleFetch>,
    /// `None`: paused.
    until: Option<Instant>,
}

/// What a consumer's fetching does next.
enum Turn {
    Pause,
    /// Fetch again, for this long unless records come.
    Resume(Duration),
}

impl Fetching {
    fn new(name: &'static str, idle: Option<IdleFetch>) -> Self {
        let until = idle.as_ref().map(|idle| Instant::now() + idle.after);
        metrics::consumer_fetching(name, true);
        Self { name, idle, until }
    }

    /// When the consumer should pause, or fetch again; never without `idle`.
    async fn next_turn(&self, consumer: &WalletConsumer) -> Turn {
        let Some(idle) = &self.idle else {
            return std::future::pending().await;
        };
        match self.until {
            Some(until) => {
                tokio::time::sleep_until(until).await;
                // Records wait: the fetch for them is slow (a busy broker), not missing.
                // A pause would drop its answer, and the short looks that follow end
                // before a slow answer comes, so the consumer would never catch up.
                if consumer.behind() {
                    Turn::Resume(idle.after)
                } else {
                    Turn::Pause
                }
            }
            None => tokio::select! {
                _ = idle.wake.notified() => Turn::Resume(idle.after),
                // Partitions just assigned are fetched: records may wait there.
                _ = consumer.assigned() => Turn::Resume(idle.after),
                _ = tokio::time::sleep(crate::lock::jitter(idle.look_every)) => {
                    Turn::Resume(if consumer.behind() { idle.after } else { idle.look_for })
                }
            },
        }
    }

    fn take(&mut self, turn: Turn, consumer: &WalletConsumer) {
        let fetching = !matches!(turn, Turn::Pause);
        tracing::debug!(
            consumer = self.name,
            fetching,
            "idle consumer's fetching changed"
        );
        match turn {
            Turn::Pause => self.set_paused(consumer, true),
            Turn::Resume(fetch_for) => {
                if self.until.is_none() {
                    self.set_paused(consumer, false);
                }
                self.until = Some(Instant::now() + fetch_for);
            }
        }
    }

    /// A record came, or one was just handled: keep fetching for a while.
    fn received(&mut self, consumer: &WalletConsumer) {
        let Some(after) = self.idle.as_ref().map(|idle| idle.after) else {
            return;
        };
        // A record while paused was already on its way when the consumer paused, or
        // comes from partitions a rebalance just assigned.
        if self.until.is_none() {
            self.set_paused(consumer, false);
        }
        self.until = Some(Instant::now() + after);
    }

    fn set_paused(&mut self, consumer: &WalletConsumer, paused: bool) {
        if let Err(e) = consumer.set_fetching(!paused) {
            tracing::debug!(consumer = self.name, paused, error = %e, "could not change fetching");
        }
        if paused {
            self.until = None;
        }
        metrics::consumer_fetching(self.name, !paused);
    }
}

async fn consume_until_stopped<H: RecordHandler>(
    name: &'static str,
    consumer: &WalletConsumer,
    handler: H,
    mut dead_letters: DeadLetterPublisher,
    retry: RetryPolicy,
    mut fetching: Fetching,
    stop: StopSignal,
) {
    let mut batch: Vec<OwnedMessage> = Vec::new();
    let mut errors = ReceiveErrors::default();
    loop {
        if batch.is_empty() {
            let record = tokio::select! {
                // A record already waiting goes before a pause, which would drop it
                // from the queue to fetch it again after the next wake-up.
                biased;
                _ = stop.cancelled() => break,
                received = consumer.recv() => match received {
                    Ok(message) => message.detach(),
                    Err(e) => {
                        errors.seen(name, &e);
                        // librdkafka queues an error event at every failed connection
                        // attempt, and a consumer gets them one per receive: after a
                        // long outage thousands wait ahead of the first record. Those
                        // already queued are taken at once; the pause comes only when
                        // none is left, so the consumer resumes as soon as the broker
                        // answers.
                        match drain_errors(name, consumer, &mut errors) {
                            Some(message) => message,
                            None => {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                continue;
                            }
                        }
                    }
                },
                turn = fetching.next_turn(consumer) => {
                    fetching.take(turn, consumer);
                    continue;
                }
            };
            fetching.received(consumer);
            batch.push(record);
            // Whatever else is already waiting, without waiting for more.
            while batch.len() < MAX_BATCH {
                match consumer.recv().now_or_never() {
                    Some(Ok(message)) => batch.push(message.detach()),
                    _ => break,
                }
            }
            if batch.len() > 1 {
                match handler.handle_batch(&batch).await {
                    Some(Ok(())) => {
                        commit_all(name, consumer, &batch);
                        fetching.received(consumer);
                        for _ in 0..batch.len() {
                            metrics::consumer_record(name, "applied");
                        }
                        batch.clear();
                        continue;
                    }
                    Some(Err(e)) => {
                        tracing::info!(consumer = name, records = batch.len(), error = %format!("{e:#}"),
                            "batch failed; handling its records one by one");
                    }
                    None => {}
                }
            }
            // Handled one by one below, oldest first.
            batch.reverse();
        }
        let Some(record) = batch.pop() else { continue };
        let failure = process(name, &record, &handler, &retry, &stop).await;
        // Handling took time in which nothing was received: the idle clock starts now.
        fetching.received(consumer);
        let Some(failure) = failure else {
            if stop.is_cancelled() {
                // Stopped mid-retry: not committed, so it is redelivered.
                break;
            }
            commit(name, consumer, &record);
            metrics::consumer_record(name, "applied");
            continue;
        };
        // Dead-letter it; until the broker takes it, keep trying (never commit a record
        // that is neither applied nor dead-lettered).
        let mut attempt = 0;
        loop {
            match dead_letters.publish(&record, failure.as_failure()).await {
                Ok(()) => {
                    tracing::warn!(consumer = name, topic = record.topic(), offset = record.offset(),
                        error = %failure.message, "record sent to the dead-letter topic");
                    commit(name, consumer, &record);
                    metrics::consumer_record(name, "dead_lettered");
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(consumer = name, error = ?e, "dead-letter publish failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff(attempt, retry.base, retry.cap)) => {}
                    }
                }
            }
        }
    }
}

struct DeadRecord {
    kind: &'static str,
    message: String,
    attempts: u32,
}

impl DeadRecord {
    fn as_failure(&self) -> Failure<'_> {
        Failure {
            kind: self.kind,
            message: self.message.clone(),
            attempts: self.attempts,
        }
    }
}

/// Handles one record with retries. `None`: handled (or interrupted by shutdown).
async fn process<H: RecordHandler>(
    name: &'static str,
    record: &OwnedMessage,
    handler: &H,
    retry: &RetryPolicy,
    stop: &StopSignal,
) -> Option<DeadRecord> {
    let mut attempt = 1;
    let mut waiting_since = None::<Instant>;
    loop {
        let error = match handler.handle(record).await {
            Ok(()) => return None,
            Err(HandlerError::Poison(message)) => {
                return Some(DeadRecord {
                    kind: "poison",
                    message,
                    attempts: attempt,
                })
            }
            Err(HandlerError::InFlight(message)) => {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() < retry.in_flight_wait {
                    tracing::debug!(consumer = name, %message, "record waits for a request in flight");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(IN_FLIGHT_POLL) => {}
                    }
                    continue;
                }
                // Waited as long as a claim can last: something keeps the key busy.
                anyhow::anyhow!("{message} (waited {:?})", since.elapsed())
            }
            Err(HandlerError::Transient(e)) => e,
        };
        if attempt >= retry.attempts {
            return Some(DeadRecord {
                kind: "failed",
                message: format!("{error:#}"),
                attempts: attempt,
            });
        }
        metrics::consumer_retry(name);
        tracing::info!(consumer = name, attempt, error = %format!("{error:#}"), "record failed; retrying");
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff(attempt, retry.base, retry.cap)) => {}
        }
        attempt += 1;
    }
}

fn commit(name: &str, consumer: &WalletConsumer, record: &OwnedMessage) {
    commit_all(name, consumer, std::slice::from_ref(record));
}

/// Commits past the last of `records` in each of their partitions.
fn commit_all(name: &str, consumer: &WalletConsumer, records: &[OwnedMessage]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for record in records {
        let offset = next
            .entry((record.topic(), record.partition()))
            .or_default();
        *offset = (*offset).max(record.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    let added = next
        .into_iter()
        .try_for_each(|((topic, partition), offset)| {
            offsets.add_partition_offset(topic, partition, Offset::Offset(offset))
        });
    if let Err(e) = added.and_then(|_| consumer.commit(&offsets, CommitMode::Async)) {
        // The records are redelivered after a restart; handlers are idempotent.
        tracing::warn!(consumer = name, error = %e, "offset commit failed");
    }
}
