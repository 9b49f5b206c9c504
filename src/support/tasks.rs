//! Background tasks owned by the application: each is started through [`Tasks`], all
//! are told to stop by one [`CancellationToken`], and shutdown waits for them together,
//! with one bound (the way mini-redis tracks its connections).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use tokio_util::sync::CancellationToken as StopSignal;

/// The application's tasks; cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The signal a worker watches: it finishes the unit of work in hand, then returns.
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// Starts a task that ends by itself: once told to stop (see
    /// [`Tasks::stop_signal`]), once its input is gone, or once its work is done (a
    /// request's use case, whose caller may await the handle or go away).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Starts a task that has no unit of work to finish: it is dropped where it stands
    /// when shutdown begins (a listener, a probe, a periodic chore).
    pub fn spawn_until_stopped<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Tells every task to stop and waits for all of them at once, at most `limit`.
    /// Returns how many were still running when the wait ended.
    pub async fn shutdown(&self, limit: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
        self.tracker.len()
    }
}
