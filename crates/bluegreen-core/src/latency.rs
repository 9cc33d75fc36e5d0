//! Fixed latency buckets. Fixed (not adaptive) so counts from any number of
//! routers add up, and so the request path records with one atomic add.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Upper bounds of the buckets in microseconds; a last, unbounded bucket follows.
pub const BOUNDS_US: [u64; 40] = [
    100, 150, 200, 300, 400, 500, 700, //
    1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_000, //
    10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 70_000, //
    100_000, 150_000, 200_000, 300_000, 400_000, 500_000, 700_000, //
    1_000_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000, 7_000_000, //
    10_000_000, 15_000_000, 20_000_000, 30_000_000, 60_000_000,
];

/// Number of buckets, the unbounded one included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bucket a latency falls in.
pub fn bucket(latency: Duration) -> usize {
    let us = latency.as_micros().min(u64::MAX as u128) as u64;
    BOUNDS_US.partition_point(|&b| b < us)
}

/// Counts per bucket, plus the totals a window needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
        }
    }
}

impl Histogram {
    /// Observations in the histogram.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `self - earlier`, bucket by bucket (saturating, for counters that restarted).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Estimated quantile `q` (0..=1), interpolating inside the bucket.
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                let hi = BOUNDS_US.get(i).copied().unwrap_or(lo * 2);
                let frac = (rank - seen) as f64 / c as f64;
                return Some(Duration::from_micros(lo + ((hi - lo) as f64 * frac) as u64));
            }
            seen += c;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_found_by_upper_bound() {
        assert_eq!(bucket(Duration::from_micros(50)), 0);
        assert_eq!(bucket(Duration::from_micros(100)), 0);
        assert_eq!(bucket(Duration::from_micros(101)), 1);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn p99_lands_in_the_right_bucket() {
        let mut h = Histogram::default();
        h.counts[bucket(Duration::from_millis(1))] += 990;
        h.counts[bucket(Duration::from_millis(250))] += 10;
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 <= Duration::from_millis(1), "{p50:?}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 <= Duration::from_millis(1), "{p99:?}");
        let p999 = h.quantile(0.999).unwrap();
        assert!(
            p999 > Duration::from_millis(200) && p999 <= Duration::from_millis(300),
            "{p999:?}"
        );
        assert_eq!(Histogram::default().quantile(0.99), None);
    }

    #[test]
    fn since_subtracts_bucketwise() {
        let mut a = Histogram::default();
        a.counts[3] = 10;
        let mut b = a.clone();
        b.counts[3] = 15;
        b.counts[4] = 2;
        assert_eq!(b.since(&a).total(), 7);
    }
}
