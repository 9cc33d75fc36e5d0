//! Per-side traffic counters the request path updates with a few atomic adds,
//! and the bake reads as windows.

use bluegreen_core::bake::Window;
use bluegreen_core::latency::{self, Histogram, BUCKETS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Cumulative counters for one side and one listener.
pub struct TrafficStats {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for TrafficStats {
    fn default() -> Self {
        TrafficStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl TrafficStats {
    /// Records one answered request: its status and time to response headers.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[latency::bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters so far, as a window since the start.
    pub fn window(&self) -> Window {
        Window {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
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
        let w = s.window();
        assert_eq!((w.requests, w.errors), (3, 1));
        assert_eq!(w.latency.total(), 3);
    }
}
