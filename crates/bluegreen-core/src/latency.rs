//! Log-linear latency buckets: 32 per doubling, so any latency is known to
//! within about 3 % (a p99 of 15 ms and one of 14.6 ms are different numbers,
//! not the same bucket edge). The buckets are fixed, not adaptive, so counts
//! from any number of routers add up, and the request path records with one
//! atomic add after a few integer instructions.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Sub-buckets per power of two: the resolution is 1/32 (about 3 %).
const SUB: u64 = 32;
/// log2(SUB).
const SUB_BITS: u32 = 5;
/// Latencies from 2^26 µs (about 67 s) on share the last bucket.
const MAX_BITS: u32 = 26;

/// Number of buckets: 32 exact ones below 32 µs, 32 per doubling up to
/// 2^26 µs, and one unbounded.
pub const BUCKETS: usize = (SUB + (MAX_BITS - SUB_BITS) as u64 * SUB + 1) as usize;

/// The bucket a latency falls in.
pub fn bucket(latency: Duration) -> usize {
    let us = latency.as_micros().min(u64::MAX as u128) as u64;
    if us < SUB {
        return us as usize;
    }
    let k = 63 - us.leading_zeros(); // 2^k <= us < 2^(k+1)
    if k >= MAX_BITS {
        return BUCKETS - 1;
    }
    let sub = (us - (1 << k)) >> (k - SUB_BITS);
    (SUB + (k - SUB_BITS) as u64 * SUB + sub) as usize
}

/// Lower and upper bound of bucket `i` in microseconds (the last one has
/// no upper bound: `u64::MAX`).
pub fn bounds_us(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i + 1);
    }
    if i as usize >= BUCKETS - 1 {
        return (1 << MAX_BITS, u64::MAX);
    }
    let k = (i - SUB) / SUB + SUB_BITS as u64;
    let sub = (i - SUB) % SUB;
    let width = 1u64 << (k - SUB_BITS as u64);
    let lo = (1u64 << k) + sub * width;
    (lo, lo + width)
}

/// The `le` bounds (µs) to export as a Prometheus histogram: 1× and 1.5×
/// every power of two from 64 µs to 2^26 µs. Each is a bucket edge, so the
/// exported counts are exact.
pub fn export_bounds_us() -> Vec<u64> {
    (6..=MAX_BITS)
        .flat_map(|k| [1u64 << k, (1u64 << k) + (1u64 << (k - 1))])
        .filter(|&b| b <= 1 << MAX_BITS)
        .collect()
}

/// Counts per bucket, plus the totals a window needs. As JSON, the buckets
/// that counted something with their bounds, `"buckets": [[lo_us, hi_us,
/// count], ...]`, beside the dense `"counts"` earlier versions read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub counts: Vec<u64>,
}

impl Histogram {
    /// The buckets that counted something: `(lo_us, hi_us, count)`.
    fn counted(&self) -> Vec<(u64, u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| {
                let (lo, hi) = bounds_us(i);
                (lo, hi, *n)
            })
            .collect()
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets = self.counted();
        // Both forms: `counts` for readers of earlier versions (a cluster
        // in a rolling upgrade, a downgrade), `buckets` for people and
        // newer readers. The CLI's --json shows only the second.
        #[derive(Serialize)]
        struct Both<'a> {
            counts: &'a [u64],
            buckets: Vec<(u64, u64, u64)>,
        }
        Both {
            counts: &self.counts,
            buckets,
        }
        .serialize(s)
    }
}

/// A histogram as its counted buckets only (`{"buckets": [[lo_us, hi_us,
/// count], ...]}`), for documents written often: a node's report in a
/// shared store, which every write keeps a revision of.
pub struct Sparse<'a>(pub &'a Histogram);

impl Serialize for Sparse<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Only {
            buckets: Vec<(u64, u64, u64)>,
        }
        Only {
            buckets: self.0.counted(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Either {
            #[serde(default)]
            counts: Option<Vec<u64>>,
            #[serde(default)]
            buckets: Option<Vec<(u64, u64, u64)>>,
        }
        let e = Either::deserialize(d)?;
        let mut h = Histogram::default();
        match (e.buckets, e.counts) {
            (Some(buckets), _) => {
                for (lo, _, n) in buckets {
                    h.counts[bucket(Duration::from_micros(lo))] += n;
                }
            }
            (None, Some(counts)) => {
                for (i, n) in counts.into_iter().enumerate().take(BUCKETS) {
                    h.counts[i] = n;
                }
            }
            (None, None) => {}
        }
        Ok(h)
    }
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

    /// `self + other`, bucket by bucket (the same fixed buckets on every
    /// node, so the traffic of several nodes adds up exactly).
    pub fn plus(&self, other: &Histogram) -> Histogram {
        let n = self.counts.len().max(other.counts.len());
        let at = |h: &Histogram, i: usize| h.counts.get(i).copied().unwrap_or(0);
        Histogram {
            counts: (0..n).map(|i| at(self, i) + at(other, i)).collect(),
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
                let (lo, hi) = bounds_us(i);
                let hi = if hi == u64::MAX { lo * 2 } else { hi };
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
    fn json_names_only_the_buckets_that_counted_with_their_bounds() {
        let mut h = Histogram::default();
        h.counts[bucket(Duration::from_micros(7))] += 2;
        h.counts[bucket(Duration::from_millis(3))] += 5;
        let text = serde_json::to_string(&h).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let buckets = v["buckets"].as_array().unwrap();
        // Earlier versions read the dense form beside it.
        assert_eq!(v["counts"].as_array().unwrap().len(), BUCKETS);
        assert_eq!(buckets.len(), 2, "{text}");
        let (lo, hi) = (
            buckets[1][0].as_u64().unwrap(),
            buckets[1][1].as_u64().unwrap(),
        );
        assert!(lo <= 3000 && 3000 < hi, "{text}");
        assert_eq!(serde_json::from_str::<Histogram>(&text).unwrap(), h);
        // What earlier versions wrote still reads.
        let dense = serde_json::json!({"counts": h.counts}).to_string();
        assert_eq!(serde_json::from_str::<Histogram>(&dense).unwrap(), h);
    }

    #[test]
    fn every_latency_lands_in_a_bucket_within_three_percent() {
        assert_eq!(bucket(Duration::from_micros(0)), 0);
        assert_eq!(bucket(Duration::from_micros(31)), 31);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        let mut last = 0;
        for us in (0..2_000_000u64).step_by(7).chain([67_108_863, 67_108_864]) {
            let i = bucket(Duration::from_micros(us));
            assert!(i >= last, "monotonic at {us}");
            last = i;
            let (lo, hi) = bounds_us(i);
            assert!(lo <= us && us < hi, "{us} in [{lo}, {hi}) (bucket {i})");
            if us >= 32 && hi != u64::MAX {
                assert!((hi - lo) as f64 / lo as f64 <= 1.0 / 32.0 + 1e-9, "{us}");
            }
        }
        // Buckets tile the line: each starts where the one before ended.
        for i in 1..BUCKETS {
            assert_eq!(bounds_us(i).0, bounds_us(i - 1).1, "bucket {i}");
        }
    }

    #[test]
    fn exported_bounds_are_bucket_edges() {
        let edges: Vec<u64> = (0..BUCKETS).map(|i| bounds_us(i).1).collect();
        let exported = export_bounds_us();
        assert!(exported.len() >= 40);
        for b in exported {
            assert!(edges.contains(&b), "{b}");
        }
    }

    #[test]
    fn nearby_p99s_are_told_apart() {
        // The false rollback: 15.0 ms against a limit of 3 x 4.2 ms = 12.6 ms
        // was fine, 14.6 ms and 15.0 ms were the same bucket edge before.
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.counts[bucket(Duration::from_micros(14_600))] = 100;
        b.counts[bucket(Duration::from_micros(15_400))] = 100;
        assert!(a.quantile(0.99) < b.quantile(0.99));
        let p = a.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p - 14_600.0).abs() / 14_600.0 < 0.035, "{p}");
    }

    #[test]
    fn p99_lands_in_the_right_bucket() {
        let mut h = Histogram::default();
        h.counts[bucket(Duration::from_millis(1))] += 990;
        h.counts[bucket(Duration::from_millis(250))] += 10;
        // 1 ms falls in [1000, 1024) µs: within that bucket's 2.4 %.
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 <= Duration::from_micros(1024), "{p50:?}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 <= Duration::from_micros(1024), "{p99:?}");
        let p999 = h.quantile(0.999).unwrap();
        assert!(
            p999 > Duration::from_millis(245) && p999 <= Duration::from_millis(256),
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
