//! The node's confidence in its routing state, with a shared store (the
//! heartbeat and the check are the control's: `control/fresh.rs`). A live
//! request that finds the node in doubt waits here for the check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long without a heartbeat before the node doubts its state.
pub(crate) const GAP: Duration = Duration::from_secs(1);

/// The node's confidence in its routing state.
pub struct Freshness {
    base: Instant,
    /// Milliseconds since `base` at the last heartbeat.
    pub(crate) beat_ms: AtomicU64,
    /// Set from a detected gap until the check is done.
    doubt: AtomicBool,
    /// A request began the doubt: the heartbeat starts the check.
    ask: tokio::sync::Notify,
    checked: tokio::sync::Notify,
    /// The longest a check may take (the cluster's converge timeout).
    limit: Duration,
}

impl Freshness {
    pub(crate) fn new(limit: Duration) -> Freshness {
        Freshness {
            base: Instant::now(),
            beat_ms: AtomicU64::new(0),
            doubt: AtomicBool::new(false),
            ask: tokio::sync::Notify::new(),
            checked: tokio::sync::Notify::new(),
            limit,
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// True when live requests must wait for the check (request path: two
    /// atomic loads and a clock read, with a shared store only).
    pub fn in_doubt(&self) -> bool {
        self.doubt.load(Ordering::Acquire)
            || self
                .now_ms()
                .saturating_sub(self.beat_ms.load(Ordering::Relaxed))
                > GAP.as_millis() as u64
    }

    /// Enters doubt; true when this call did (so it starts the one check).
    pub(crate) fn begin_doubt(&self) -> bool {
        !self.doubt.swap(true, Ordering::AcqRel)
    }

    /// The check is done: requests go on, by the snapshot of now.
    pub(crate) fn end_doubt(&self) {
        self.doubt.store(false, Ordering::Release);
        self.beat_ms.store(self.now_ms(), Ordering::Relaxed);
        self.checked.notify_waiters();
    }

    /// Resolves when a request has begun a doubt (the control's checker,
    /// `control/fresh.rs`, waits on it until the router shuts down).
    pub(crate) async fn asked(&self) {
        self.ask.notified().await
    }

    /// Holds a live request while this node doubts its state; true when it
    /// waited, so the caller routes afresh.
    pub async fn wait(&self) -> bool {
        if !self.in_doubt() {
            return false;
        }
        let checked = self.checked.notified();
        tokio::pin!(checked);
        checked.as_mut().enable();
        if self.begin_doubt() {
            // A stored permit: the heartbeat picks it up even if it is busy.
            self.ask.notify_one();
        }
        if self.doubt.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.limit + Duration::from_secs(1), checked).await;
        }
        true
    }
}
