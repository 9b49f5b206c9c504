//! Lock releases announced by other holders, heard on one pub/sub channel per process.
//!
//! A batch that found a wallet held elsewhere queues its jobs until the holder
//! announces the release (`lua/lib/release.lua` publishes it when someone waited), or
//! a short jittered poll interval passes: the safety net for a lost message or an
//! expired lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

use tokio::sync::Notify;

/// What the listener tells the engine.
#[derive(Default)]
pub struct Releases {
    /// Notified at every release announced, whatever the wallet.
    any: Notify,
    /// How many releases were announced so far: a job that read it before trying
    /// Redis knows whether one came while it was not listening.
    count: AtomicU64,
}

impl Releases {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves at the next release announced. One announced before it is awaited
    /// leaves a permit (`notify_one`), so none is missed.
    pub fn any(&self) -> tokio::sync::futures::Notified<'_> {
        self.any.notified()
    }
}

/// Listens on the release channel for as long as `releases` is alive.
pub async fn listen(
    releases: Weak<Releases>,
    nodes: crate::redis_support::PubSubNodes,
    channel: String,
) {
    crate::redis_support::listen(releases, nodes, channel, "lock releases", |releases, _| {
        releases.count.fetch_add(1, Ordering::AcqRel);
        releases.any.notify_one();
    })
    .await
}
