//! Connection activity, for the idle timeout: bytes moving, requests waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::watched::{Watch, Watched};

/// Whether bytes moved on a connection lately, and how many of its requests are
/// waiting for their response head; for the idle timeout. Moving bytes only sets a
/// flag (no clock read per read or write); the watcher looks at it four times per
/// idle period, so an idle connection is closed between 1 and 1.25 idle periods
/// after its last byte.
pub(crate) struct Activity {
    active: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            active: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Returns once no byte moved and no request waited for `idle` (to 1.25 `idle`).
    pub(crate) async fn idle_for(&self, idle: Duration) {
        const LOOKS: u32 = 4;
        let step = idle / LOOKS;
        let mut quiet = 0;
        loop {
            tokio::time::sleep(step).await;
            let busy = self.active.swap(false, Ordering::Relaxed)
                || self.in_flight.load(Ordering::Relaxed) > 0;
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet >= LOOKS {
                return;
            }
        }
    }
}

/// Marks a request in progress on its connection until dropped.
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A stream that records when bytes move.
pub(crate) type ActivityIo<S> = Watched<S, Arc<Activity>>;

impl Watch for Arc<Activity> {
    fn read(&mut self, bytes: &[u8]) -> usize {
        self.touch();
        bytes.len()
    }

    fn wrote(&mut self) {
        self.touch();
    }
}
