//! Gives memory back after a burst of connections went idle. glibc keeps
//! what the process freed in its heap, and when thousands of clients park
//! together the buffers they lingered with leave holes between the parked
//! tasks that stay resident (11 MiB of 56 with 10,000 idle clients here).
//! `malloc_trim(0)` returns the whole free pages inside those holes too.
//! The same loop closes upstream connections a burst opened and nobody
//! uses any more (`ConnPool::purge`).

use crate::plane::Plane;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the parked count is looked at.
const EVERY: Duration = Duration::from_secs(1);
/// A trim once at least this many more connections parked since the last
/// one (a burst), and the count has settled.
const BURST: usize = 256;

/// Returns the free pages of glibc's heaps to the system; false elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointers; glibc locks each arena while
    // it walks it, like any other allocator call.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

/// Trims after each burst of parked connections, on a blocking thread (the
/// walk takes a few milliseconds with 10,000 connections), until `stop`.
pub fn spawn_trimmer(plane: Arc<Plane>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut trimmed_at = 0usize;
        let mut last = 0usize;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let closed = plane.purge_upstream_conns(crate::upstream::conn::PURGE_AFTER);
            let parked = plane.parked_clients();
            // Settled (no longer growing) and well above the last trim, or
            // many upstream connections (and their buffers) just closed.
            let burst = parked >= trimmed_at + BURST && parked <= last;
            if burst || closed >= BURST / 4 {
                if burst {
                    trimmed_at = parked;
                }
                let released = tokio::task::spawn_blocking(release_free_memory)
                    .await
                    .unwrap_or(false);
                tracing::debug!(
                    parked,
                    closed,
                    released,
                    "gave freed memory back after a burst of idle clients or closed upstream connections"
                );
            }
            // Fewer parked now: the next burst is measured from here.
            trimmed_at = trimmed_at.min(parked);
            last = parked;
        }
    })
}
