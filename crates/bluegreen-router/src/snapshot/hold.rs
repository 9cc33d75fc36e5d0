//! A pause in effect: the queue of held live requests, let go in arrival
//! order by `resume` (the answers to those not let through are the request
//! path's: `request::hold`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A pause in effect (a field of the routing snapshot).
#[derive(Debug)]
pub struct Hold {
    /// No permits until resumed; tokio's semaphore is fair, so waiters get
    /// them in the order they came. `release` adds one, and each released
    /// request passes it on (its `Baton`) once it has its place at an
    /// upstream: so they take their places in arrival order, instead of
    /// all waking at once and racing (a connection storm, in any order).
    gate: Semaphore,
    /// Resumed: a request that comes now does not queue.
    open: std::sync::atomic::AtomicBool,
    waiting: AtomicUsize,
    released: AtomicUsize,
    pub timeout: Duration,
    pub limit: usize,
    pub since: Instant,
    pub since_ms: u64,
}

/// A released request's turn: dropped once it has its place at an upstream
/// (or has failed, or its client went away), it lets the next one go.
#[derive(Debug)]
pub struct Baton(Option<std::sync::Arc<Hold>>);

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.gate.add_permits(1);
        }
    }
}

/// Why a held request was not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum NotReleased {
    /// The queue was full when it came.
    Full,
    /// It waited `timeout`.
    TimedOut,
}

impl Hold {
    pub fn new(timeout: Duration, limit: usize, since_ms: u64) -> Hold {
        Hold {
            gate: Semaphore::new(0),
            open: std::sync::atomic::AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            timeout,
            limit,
            since: Instant::now(),
            since_ms,
        }
    }

    /// Waits until the pause ends and the requests held before this one
    /// have taken their places (then the caller routes with the snapshot of
    /// that moment: a switch made while paused applies to these). The
    /// baton lets the next one go when dropped.
    pub async fn wait(self: &std::sync::Arc<Self>) -> Result<Baton, NotReleased> {
        // Resumed, and every held request through the gate: no wait. While
        // held ones are still going, a newcomer queues behind them (it must
        // not overtake them at a busy upstream).
        if self.open.load(Ordering::Acquire) && self.waiting.load(Ordering::Acquire) == 0 {
            return Ok(Baton(None));
        }
        // Counted while waiting, also when the client goes away meanwhile
        // (the future is dropped): a guard gives the place back.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // A place in the gate's queue first (an acquire is queued when it is
        // first polled), then counted: `waiting` counts requests that are in
        // the queue, so a request seen waiting is ahead of every later one.
        let acquire = self.gate.acquire();
        tokio::pin!(acquire);
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(acquire.as_mut().poll(cx))).await;
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _place = Waiting(&self.waiting);
        if before >= self.limit {
            // Leaves the queue (and gives back a permit it got at once).
            return Err(NotReleased::Full);
        }
        let got = match first {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout(self.timeout, acquire).await,
        };
        match got {
            Ok(Ok(permit)) => {
                permit.forget();
                self.released.fetch_add(1, Ordering::Relaxed);
                Ok(Baton(Some(self.clone())))
            }
            Ok(Err(_)) | Err(_) => Err(NotReleased::TimedOut),
        }
    }

    /// Lets the waiting requests go, one after the other in arrival order;
    /// later ones pass at once.
    pub fn release(&self) {
        self.open.store(true, Ordering::Release);
        self.gate.add_permits(1);
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests let through after waiting.
    pub fn released(&self) -> usize {
        self.released.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Released requests go one after the other, in arrival order, even on
    /// a multi-threaded runtime: each takes its turn from the one before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn held_requests_go_in_order_once_released_and_the_queue_is_bounded() {
        let n = 200;
        let hold = Arc::new(Hold::new(Duration::from_secs(5), n, 0));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..n {
            let (h, o) = (hold.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let baton = h.wait().await.unwrap();
                o.lock().unwrap().push(i);
                drop(baton);
            }));
            while hold.waiting() <= i {
                tokio::task::yield_now().await;
            }
        }
        assert!(matches!(hold.wait().await, Err(NotReleased::Full)));
        hold.release();
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..n).collect::<Vec<_>>());
        assert_eq!(hold.released(), n);
        assert!(hold.wait().await.is_ok(), "after the release, no wait");
    }

    #[tokio::test]
    async fn a_held_request_whose_client_left_gives_its_place_back() {
        let hold = Arc::new(Hold::new(Duration::from_secs(5), 1, 0));
        let gone = tokio::time::timeout(Duration::from_millis(20), hold.wait()).await;
        assert!(gone.is_err(), "still held");
        assert_eq!(hold.waiting(), 0, "the dropped wait left the queue");
    }

    #[tokio::test]
    async fn a_held_request_gives_up_after_the_timeout() {
        let hold = Arc::new(Hold::new(Duration::from_millis(30), 10, 0));
        assert!(matches!(hold.wait().await, Err(NotReleased::TimedOut)));
        assert_eq!(hold.waiting(), 0);
    }
}
