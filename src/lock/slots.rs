//! In-process bookkeeping per wallet: a FIFO queue in front of the Redis lock and the
//! wake-up that a release message triggers.
//!
//! Only the head of a wallet's local queue talks to Redis, so a hot wallet costs one
//! Redis waiter per instance instead of one per request, and a release wakes exactly
//! one task here. A holder with local successors may pass its Redis lock on as a
//! [`Baton`] instead of releasing it, sparing the next holder two Redis round trips.
//!
//! A baton must never be stranded: a slot nobody enters any more would keep it, and its
//! renewal task would keep the wallet locked for every other instance. So each slot
//! counts its users (queued or holding the turn) under the map's mutex, and the last
//! one to leave removes the slot and sends a baton still in it to be released in Redis.
//! Anyone else may hold an `Arc` of a slot for a moment (a wake-up does) without
//! changing who is last.

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
///
/// Dropping one stops its renewal, so even a baton lost on the way only holds the wallet
/// until its lease runs out.
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

/// A wallet's slot and how many [`SlotHandle`]s use it. The count only changes under the
/// map's mutex, so the handle that takes it to zero knows nobody else can find the slot.
struct Entry {
    slot: Arc<Slot>,
    users: usize,
}

/// The wallets that have a request in this process right now.
pub struct Slots {
    map: Mutex<HashMap<String, Entry>>,
    /// Notified at every release announced on the channel, whatever the wallet: the
    /// batch committer waits on it for wallets another process held.
    pub any_release: Notify,
    /// How many releases were announced so far: a waiter that read it before trying
    /// Redis knows whether one came while it was not listening.
    pub releases: std::sync::atomic::AtomicU64,
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
            any_release: Notify::new(),
            releases: std::sync::atomic::AtomicU64::new(0),
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
        let entry = map
            .entry(user_id.as_str().to_owned())
            .or_insert_with(|| Entry {
                slot: Arc::new(Slot {
                    queue: Arc::new(tokio::sync::Mutex::new(())),
                    released: Notify::new(),
                    baton: Mutex::new(None),
                    yield_until: Mutex::new(None),
                }),
                users: 0,
            });
        entry.users += 1;
        SlotHandle {
            slots: self.clone(),
            user_id: user_id.clone(),
            slot: entry.slot.clone(),
        }
    }

    /// How many handles use `user_id`'s slot: the holder of the turn and its queue.
    fn users(&self, user_id: &Identifier) -> usize {
        let map = self.map.lock().expect("slot map poisoned");
        map.get(user_id.as_str()).map_or(0, |entry| entry.users)
    }

    /// Leaves `user_id`'s slot; the last user removes it and hands its baton, if one
    /// is left in it, to the orphan releaser.
    fn leave(&self, user_id: &Identifier, slot: &Arc<Slot>) {
        let mut map = self.map.lock().expect("slot map poisoned");
        let Some(entry) = map.get_mut(user_id.as_str()) else {
            return;
        };
        debug_assert!(Arc::ptr_eq(&entry.slot, slot), "a user's slot stays mapped");
        entry.users -= 1;
        if entry.users > 0 {
            return;
        }
        map.remove(user_id.as_str());
        // Out of the map, the slot is out of reach: no successor can take the baton
        // any more, and none can be put in (only a user passes one).
        drop(map);
        if let Some(baton) = slot.baton.lock().expect("baton poisoned").take() {
            // Fails only once the lock service is gone; dropping the baton then stops
            // its renewal and the lease expires.
            let _ = self.orphans.send((user_id.clone(), baton));
        }
    }

    /// Wakes the task waiting at the head of `user_id`'s queue, if any.
    fn wake(&self, user_id: &str) {
        let slot = self
            .map
            .lock()
            .expect("slot map poisoned")
            .get(user_id)
            .map(|entry| entry.slot.clone());
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
                        slots
                            .releases
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        slots.any_release.notify_one();
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
    ///
    /// A waiter may still give up right after; then the baton passed to it is released
    /// by whoever leaves the slot last (see [`Slots`]).
    pub fn has_waiters(&self) -> bool {
        self.handle.slots.users(&self.handle.user_id) > 1
    }

    pub fn take_baton(&self) -> Option<Baton> {
        self.handle
            .slot
            .baton
            .lock()
            .expect("baton poisoned")
            .take()
    }

    /// Leaves `baton` for the next holder. The caller still uses the slot, so the slot
    /// has a user who will either see a successor take it or release it on leaving.
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
        self.slots.leave(&self.user_id, &self.slot);
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Identifier {
        Identifier::parse("userId", id.to_owned()).unwrap()
    }

    fn baton(fence: u64) -> Baton {
        Baton {
            owner: "owner".into(),
            fence,
            lost: Arc::new(AtomicBool::new(false)),
            renewal: None,
            held_since: Instant::now(),
            passes: 0,
        }
    }

    /// What a wake-up holds while it notifies a slot.
    fn waking(slots: &Slots, user_id: &str) -> Option<Arc<Slot>> {
        let map = slots.map.lock().unwrap();
        map.get(user_id).map(|entry| entry.slot.clone())
    }

    #[tokio::test]
    async fn the_last_user_out_sends_a_baton_nobody_took_to_be_released() {
        let (orphans, mut orphaned) = tokio::sync::mpsc::unbounded_channel();
        let slots = Arc::new(Slots::new(orphans));
        let u1 = user("u1");
        let holder = slots
            .enter(&u1, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        let waiter = tokio::spawn({
            let (slots, u1) = (slots.clone(), u1.clone());
            async move {
                let deadline = Instant::now() + Duration::from_millis(20);
                slots.enter(&u1, deadline).await.is_some()
            }
        });
        while !holder.has_waiters() {
            tokio::task::yield_now().await;
        }
        // The holder passes its lock to the waiter, which gives up before its turn.
        holder.pass_baton(baton(7));
        assert!(!waiter.await.unwrap());

        // A wake-up of the slot is under way as the holder leaves.
        let wake = waking(&slots, "u1");
        drop(holder);
        let (user_id, baton) = orphaned
            .try_recv()
            .expect("the baton is sent to be released");
        assert_eq!((user_id.as_str(), baton.fence), ("u1", 7));
        assert!(slots.map.lock().unwrap().is_empty(), "the slot is gone");
        drop(wake);
    }

    #[tokio::test]
    async fn a_wake_up_is_not_a_waiter() {
        let (orphans, _orphaned) = tokio::sync::mpsc::unbounded_channel();
        let slots = Arc::new(Slots::new(orphans));
        let u1 = user("u1");
        let holder = slots
            .enter(&u1, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        let wake = waking(&slots, "u1");
        assert!(!holder.has_waiters());
        drop(wake);
    }
}
