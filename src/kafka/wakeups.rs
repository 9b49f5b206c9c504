//! Consumers that stop fetching while they have nothing to do, and the wake-ups that
//! bring them back.
//!
//! A Kafka broker answers a fetch as soon as records arrive, so a consumer that always
//! fetches costs it little. Tansu, the development broker, runs its storage queries on
//! every fetch, records or not, and answers only once `fetch.wait.max.ms` has passed:
//! three consumers fetching all the time kept it and its PostgreSQL at a quarter of a
//! core with nothing to do. So a consumer that received nothing for
//! [`IdleFetch::after`] pauses its partitions (librdkafka then sends no fetch for them),
//! and fetches again
//! - at once when records were written to one of its topics: by this process (the
//!   outbox relay, the dead-letter publisher, a dead letter retried), or by another
//!   instance, which says so on a Redis channel ([`Wakeups::written`]);
//! - for one short look every [`IdleFetch::look_every`]: records written by anyone
//!   else (a checkout publishing payment requests), or a wake-up lost while Redis was
//!   down.
//!
//! A consumer whose statistics show it behind (records past its committed offsets, at
//! the broker's high watermark as last seen) does not pause, and a look while it is
//! behind fetches for [`IdleFetch::after`]: a busy broker's answer to a fetch may come
//! later than a short look lasts, and a pause drops it.
//!
//! Pausing changes when records are fetched, never which: the records and the
//! committed offsets stay where they were, and a resumed consumer fetches from its
//! position.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::redis_support::{self, bounded, SharedRedis};

/// When a consumer stops fetching, and how it looks for records meanwhile.
#[derive(Clone, Debug)]
pub struct IdleFetch {
    /// Nothing received for this long: pause.
    pub after: Duration,
    /// While paused, fetch once this often (jittered).
    pub look_every: Duration,
    /// How long one look fetches when the consumer is not behind: one
    /// `fetch.wait.max.ms` and the round trip.
    pub look_for: Duration,
    /// Notified when records were written to the consumer's topics.
    pub wake: Arc<Notify>,
}

/// How often one topic's writes are announced to the other instances, at most: a
/// consumer pauses only after [`IdleFetch::after`] without records, so under a steady
/// flow nobody needs the announcement, and after a pause the next one is this close.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// The wake-ups of this process's consumers, by topic, and the channel on which the
/// instances tell each other that records were written.
pub struct Wakeups {
    consumers: HashMap<String, Arc<Notify>>,
    announced: Mutex<HashMap<String, Instant>>,
    redis: SharedRedis,
    channel: String,
}

impl Wakeups {
    pub fn new(redis: SharedRedis, channel: String) -> Self {
        Self {
            consumers: HashMap::new(),
            announced: Mutex::new(HashMap::new()),
            redis,
            channel,
        }
    }

    /// The wake-up of a consumer of `topics`.
    pub fn consumer(&mut self, topics: &[&str]) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        for topic in topics {
            self.consumers.insert((*topic).to_owned(), wake.clone());
        }
        wake
    }

    /// Whether this process runs a consumer to wake.
    pub fn has_consumers(&self) -> bool {
        !self.consumers.is_empty()
    }

    /// Records were written to `topic`: wakes this process's consumer of it, and tells
    /// the other instances (in the background, at most every [`ANNOUNCE_EVERY`]; an
    /// announcement lost costs their consumers one look interval).
    pub fn written(&self, topic: &str) {
        self.heard(topic);
        let now = Instant::now();
        {
            let mut announced = self.announced.lock().expect("announcements poisoned");
            match announced.get_mut(topic) {
                Some(at) if now.duration_since(*at) < ANNOUNCE_EVERY => return,
                Some(at) => *at = now,
                None => {
                    announced.insert(topic.to_owned(), now);
                }
            }
        }
        let redis = self.redis.clone();
        let channel = self.channel.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let published = async {
                let mut conn = redis.connection().await?;
                bounded(
                    redis.timeout(),
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(&topic)
                        .query_async::<i64>(&mut conn),
                )
                .await
            };
            if let Err(e) = published.await {
                redis.reset();
                tracing::debug!(error = %e, %topic, "could not announce records written");
            }
        });
    }

    fn heard(&self, topic: &str) {
        tracing::trace!(%topic, "records written");
        if let Some(wake) = self.consumers.get(topic) {
            // A wake-up nobody awaits yet leaves a permit: none is missed.
            wake.notify_one();
        }
    }
}

/// Hears the other instances' announcements for as long as `wakeups` is alive.
pub async fn listen(wakeups: Weak<Wakeups>, nodes: crate::redis_support::PubSubNodes) {
    let Some(channel) = wakeups.upgrade().map(|w| w.channel.clone()) else {
        return;
    };
    redis_support::listen(
        wakeups,
        nodes,
        channel,
        "records written",
        |wakeups, message| {
            if let Ok(topic) = message.get_payload::<String>() {
                wakeups.heard(&topic);
            }
        },
    )
    .await
}
