//! The routing snapshot: everything a request needs, swapped as one value.

pub mod hold;

use crate::settings::ProxySettings;
use crate::taps::recorder::Recorder;
use crate::taps::shadow::Shadow;
use crate::upstream::pool::Pool;
use bluegreen_core::{Side, Sides};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One routing decision table. Plain value: building a new one never touches
/// the one requests are reading.
#[derive(Clone)]
pub struct Snapshot {
    /// Switch generation this snapshot belongs to.
    pub generation: u64,
    /// Side that receives traffic on the main listener.
    pub live: Side,
    /// Upstream pools; shared between snapshots (health lives in them).
    pub pools: Sides<Arc<Pool>>,
    /// Drain epochs of live traffic, one per side.
    pub epochs: Sides<Arc<Epoch>>,
    /// Live traffic being recorded, if any. Off, it costs a branch.
    pub recorder: Option<Arc<Recorder>>,
    /// Live traffic being mirrored to the idle side, if any. Off, it costs a branch.
    pub shadow: Option<Arc<Shadow>>,
    /// Timeouts, retries and limits of the request path, swapped with the rest.
    pub settings: Arc<ProxySettings>,
    /// A pause of live traffic, if any. Off, it costs a branch.
    pub hold: Option<Arc<hold::Hold>>,
    /// Maintenance mode of the live listener, if on. Off, it costs a branch.
    pub maintenance: Option<Arc<bluegreen_core::state::Maintenance>>,
    /// A weighted split of live traffic (canary), if any.
    pub split: Option<bluegreen_core::state::Split>,
    /// `[sessions]`: cookie names and window, if configured.
    pub sessions: Option<Arc<SessionPolicy>>,
    /// After a switch: clients whose session cookie names this side stay
    /// there until `until_ms` (none after a rollback).
    pub pin: Option<Pin>,
}

/// `[sessions]` as the request path uses it.
#[derive(Debug)]
pub struct SessionPolicy {
    pub cookie: String,
    pub preview_cookie: String,
    pub app_cookie: Option<String>,
    pub window: std::time::Duration,
}

/// The old side's sessions, kept there for a while after a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub side: bluegreen_core::Side,
    /// Cookies set before this generation (the switch's) are pinned.
    pub generation: u64,
    pub until_ms: u64,
}

impl Snapshot {
    /// The side a listener sends traffic to: live for main, idle for preview.
    pub fn target(&self, preview: bool) -> Side {
        if preview {
            self.live.other()
        } else {
            self.live
        }
    }
}

/// Live traffic a side received during one stretch of being live.
///
/// When the side stops being live its epoch drains: requests and upgraded
/// connections that hold it may finish until the drain deadline, then the
/// epoch is cancelled and whatever still holds it is cut. If the side becomes
/// live again before that, the same epoch simply carries on.
pub struct Epoch {
    cut: CancellationToken,
    inflight: AtomicUsize,
    draining: AtomicBool,
    /// Generation of the switch that last retired this epoch.
    retired_by: AtomicU64,
    idle: Notify,
}

impl Epoch {
    /// A fresh epoch with nothing in flight.
    pub fn new() -> Arc<Epoch> {
        Arc::new(Epoch {
            cut: CancellationToken::new(),
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            retired_by: AtomicU64::new(0),
            idle: Notify::new(),
        })
    }

    /// Token cancelled when the drain deadline passes.
    pub fn cut_token(&self) -> &CancellationToken {
        &self.cut
    }

    /// Requests and upgraded connections holding this epoch.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub(crate) fn enter(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn leave(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1
            && self.draining.load(Ordering::Acquire)
        {
            self.idle.notify_waiters();
        }
    }

    /// Marks the epoch as draining because of switch `generation`.
    pub(crate) fn retire(&self, generation: u64) {
        self.retired_by.store(generation, Ordering::Release);
        self.draining.store(true, Ordering::Release);
    }

    /// The side went live again: its epoch is no longer draining.
    pub(crate) fn revive(&self) {
        self.draining.store(false, Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn retired_by(&self) -> u64 {
        self.retired_by.load(Ordering::Acquire)
    }

    /// Resolves once nothing holds the epoch.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}
