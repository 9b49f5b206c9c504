//! In-process bookkeeping per wallet: a FIFO queue in front of the Redis lock and the
//! wake-up that a release message triggers.
//!
//! Only the head of a wallet's local queue talks to Redis, so a hot wallet costs one
//! Redis waiter per instance instead of one per request, and a release wakes exactly
//! one task here. A holder with local successors may pass its Redis lock on as a
//! [`Baton`] instead of releasing it, sparing the next holder two Redis round trips.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::domain::Identifier;

/// A held Redis lock handed from one local holder to the next, lease and renewal intact.
pub struct Baton {
    pub(super) owner: String,
    pub(super) fence: u64,
    pub(super) lost: Arc<AtomicBool>,
    pub(super) renewal: Option<AbortHandle>,
    /// When the Redis lock was taken; bounds how long one instance keeps it.
    pub(super) held_since: Instant,
    /// How many local holders it has passed through.
    pub(super) passes: u32,
}

struct Slot {
    queue: Arc<tokio::sync::Mutex<()>>,
    released: Notify,
    baton: Mutex<Option<Baton>>,
    /// After a release another instance was waiting for, the next local holder waits
    /// until then before it tries Redis, so the other instance gets its turn.
    yield_until: Mutex<Option<Instant>>,
}

/// The wallets that have a request in this process right now.
pub struct Slots {
    map: Mutex<HashMap<String, Arc<Slot>>>,
    /// Batons left behind when every successor gave up waiting: released in Redis by
    /// the lock's orphan task.
    orphans: UnboundedSender<(Identifier, Baton)>,
}

/// A place in a wallet's local queue; holds the wallet's slot alive.
pub struct SlotHandle {
    slots: Arc<Slots>,
    user_id: Identifier,
    slot: Arc<Slot>,
}

/// Being at the head of a wallet's local queue.
pub struct LocalTurn {
    // Drops before `handle`, so the slot is removed only once nobody queues on it.
    _turn: OwnedMutexGuard<()>,
    handle: SlotHandle,
}

impl Slots {
    pub fn new(orphans: UnboundedSender<(Identifier, Baton)>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            orphans,
        }
    }

    /// Joins the local queue of `user_id` and waits, at most until `deadline`, to be first.
    pub async fn enter(
        self: &Arc<Self>,
        user_id: &Identifier,
        deadline: Instant,
    ) -> Option<LocalTurn> {
        let handle = self.handle(user_id);
        let queue = handle.slot.queue.clone();
        let turn = tokio::time::timeout_at(deadline, queue.lock_owned())
            .await
            .ok()?;
        Some(LocalTurn {
            _turn: turn,
            handle,
        })
    }

    fn handle(self: &Arc<Self>, user_id: &Identifier) -> SlotHandle {
        let mut map = self.map.lock().expect("slot map poisoned");
        let slot = map
            .entry(user_id.as_str().to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    queue: Arc::new(tokio::sync::Mutex::new(())),
                    released: Notify::new(),
                    baton: Mutex::new(None),
                    yield_until: Mutex::new(None),
                })
            })
            .clone();
        SlotHandle {
            slots: self.clone(),
            user_id: user_id.clone(),
            slot,
        }
    }

    /// Wakes the task waiting at the head of `user_id`'s queue, if any.
    fn wake(&self, user_id: &str) {
        let slot = self
            .map
            .lock()
            .expect("slot map poisoned")
            .get(user_id)
            .cloned();
        if let Some(slot) = slot {
            slot.released.notify_one();
        }
    }

    /// Listens on the release channel and wakes local waiters, for as long as `slots`
    /// is alive. One subscriber connection per process; it reconnects by itself.
    pub async fn listen(slots: Weak<Slots>, client: redis::Client, channel: String) {
        loop {
            let connected = tokio::time::timeout(Duration::from_secs(2), async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            if let Ok(Ok(mut pubsub)) = connected {
                tracing::debug!(%channel, "listening for lock releases");
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Some(slots) = slots.upgrade() else { return };
                    if let Ok(user_id) = message.get_payload::<String>() {
                        slots.wake(&user_id);
                    }
                }
            }
            if slots.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl LocalTurn {
    /// Resolves at the next release of this wallet announced on the channel. A release
    /// announced before it is awaited leaves a permit (`notify_one`), so none is missed.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.handle.slot.released.notified()
    }

    /// True when other requests of this process queue for the same wallet.
    pub fn has_waiters(&self) -> bool {
        // One reference in the map, one in our handle; any more are waiters.
        Arc::strong_count(&self.handle.slot) > 2
    }

    pub fn take_baton(&self) -> Option<Baton> {
        self.handle
            .slot
            .baton
            .lock()
            .expect("baton poisoned")
            .take()
    }

    pub fn pass_baton(&self, baton: Baton) {
        *self.handle.slot.baton.lock().expect("baton poisoned") = Some(baton);
    }

    pub fn set_yield(&self, until: Instant) {
        *self.handle.slot.yield_until.lock().expect("yield poisoned") = Some(until);
    }

    pub fn take_yield(&self) -> Option<Instant> {
        self.handle
            .slot
            .yield_until
            .lock()
            .expect("yield poisoned")
            .take()
    }
}

impl Drop for SlotHandle {
    fn drop(&mut self) {
        let mut map = self.slots.map.lock().expect("slot map poisoned");
        // One reference in the map, one here: nobody else queues for this wallet.
        if Arc::strong_count(&self.slot) == 2 {
            map.remove(self.user_id.as_str());
            if let Some(baton) = self.slot.baton.lock().expect("baton poisoned").take() {
                let _ = self.slots.orphans.send((self.user_id.clone(), baton));
            }
        }
    }
}
