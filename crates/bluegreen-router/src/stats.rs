//! Per-side traffic counters the request path updates with a few atomic adds,
//! and the bake reads as windows.

use bluegreen_core::bake::{Window, NAMED_4XX};
use bluegreen_core::latency::{self, Histogram, BUCKETS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Cumulative counters for one side and one listener.
pub struct TrafficStats {
    /// Answers by status class (index = status / 100); 5xx are the errors.
    classes: [AtomicU64; 6],
    /// 401, 403, 404 and 429 apart (`bake::NAMED_4XX`).
    named_4xx: [AtomicU64; 4],
    /// Sum of the latencies, for the metrics histogram's `_sum`.
    sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for TrafficStats {
    fn default() -> Self {
        TrafficStats {
            classes: Default::default(),
            named_4xx: Default::default(),
            sum_us: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl TrafficStats {
    /// Records one answered request: its status and time to response headers.
    pub fn record(&self, status: u16, latency: Duration) {
        self.count(status);
        self.sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        self.buckets[latency::bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records `n` answers of one status and one time at once: a router
    /// that reports counters (HAProxy's `show stat`), not requests.
    pub fn record_many(&self, status: u16, latency: Duration, n: u64) {
        if n == 0 {
            return;
        }
        self.classes[(status as usize / 100).min(5)].fetch_add(n, Ordering::Relaxed);
        if let Some(i) = NAMED_4XX.iter().position(|c| *c == status) {
            self.named_4xx[i].fetch_add(n, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(latency.as_micros() as u64 * n, Ordering::Relaxed);
        self.buckets[latency::bucket(latency)].fetch_add(n, Ordering::Relaxed);
    }

    /// Records an answer without its time: a client's own mistake (a body
    /// that broke or stalled), whose duration says nothing about the app.
    pub fn record_untimed(&self, status: u16) {
        self.count(status);
    }

    fn count(&self, status: u16) {
        self.classes[(status as usize / 100).min(5)].fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            if let Some(i) = NAMED_4XX.iter().position(|c| *c == status) {
                self.named_4xx[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers by status class (`[_, 1xx, 2xx, 3xx, 4xx, 5xx]`).
    pub fn classes(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed))
    }

    /// Sum of all latencies recorded, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// The counters so far, as a window since the start.
    pub fn window(&self) -> Window {
        let classes = self.classes();
        Window {
            requests: classes.iter().sum(),
            errors: classes[5],
            client_errors: classes[4],
            named_4xx: std::array::from_fn(|i| self.named_4xx[i].load(Ordering::Relaxed)),
            latency: Histogram {
                counts: self
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_requests_errors_and_latency() {
        let s = TrafficStats::default();
        s.record(200, Duration::from_millis(3));
        s.record(503, Duration::from_millis(3));
        s.record(404, Duration::from_millis(3));
        s.record_untimed(401);
        let w = s.window();
        assert_eq!(w.named_4xx, [1, 0, 1, 0]);
        assert_eq!((w.requests, w.errors, w.client_errors), (4, 1, 2));
        assert_eq!(w.latency.total(), 3, "the untimed 401 has no latency");

        s.record_many(500, Duration::from_millis(40), 5);
        s.record_many(200, Duration::from_millis(3), 0);
        let w = s.window();
        assert_eq!((w.requests, w.errors), (9, 6));
        assert_eq!(w.latency.total(), 8);
        assert_eq!(s.sum_us(), 3 * 3_000 + 5 * 40_000);
    }
}
