//! A hitless upgrade's handover as the router sees it: while the state goes
//! to a new process the admin API refuses changes, and a switch or rollback
//! calls a handover off rather than wait for it.

use super::Router;
use tokio_util::sync::CancellationToken;

impl Router {
    /// The state is being handed to a new process (or not any more).
    pub fn set_handing_over(&self, on: bool) {
        self.handing_over
            .store(on, std::sync::atomic::Ordering::SeqCst);
        // The outbox goes to the new process with the state: this one
        // neither delivers nor writes it meanwhile.
        if let Some(n) = self.notifier.get() {
            n.pause(on);
        }
    }

    /// True while changes must wait for the new process (see above).
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How to call off the handover in progress while its new process is
    /// not ready (`None` once it is: then the state is the new one's).
    pub fn set_handover_abort(&self, abort: Option<CancellationToken>) {
        *self
            .handover_abort
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = abort;
    }

    /// Calls off a handover whose new process is not ready yet and waits up
    /// to `limit` until this process has the state back. False when the
    /// state stays with a new process that is serving already.
    pub async fn abort_handover(&self, limit: std::time::Duration) -> bool {
        let abort = self
            .handover_abort
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match abort {
            Some(t) => t.cancel(),
            // The new process is ready: the state is its own.
            None if self.handing_over() => return false,
            None => return true,
        }
        let deadline = tokio::time::Instant::now() + limit;
        while self.handing_over() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }
}
