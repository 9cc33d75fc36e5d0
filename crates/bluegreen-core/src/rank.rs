//! The rank test the judge uses to compare the new side with the old one:
//! Mann-Whitney U (as Spinnaker's Kayenta does), with the Hodges-Lehmann
//! estimate of how far the new side moved. A rank test needs no assumption
//! about the shape of latency or CPU distributions (long tails, several
//! modes), sees a whole-distribution shift in a few dozen requests, and
//! with the effect-size floor a tiny but real shift on huge traffic is not
//! called a regression.
//!
//! Inputs are weighted values (`(value, count)`), so a latency histogram's
//! buckets are ranked without expanding them into samples: values in one
//! bucket are ties, which the test corrects for.

use crate::latency::{bounds_us, Histogram};

/// The result of comparing `new` with `base`.
#[derive(Debug, Clone, PartialEq)]
pub struct RankTest {
    pub n_new: u64,
    pub n_base: u64,
    /// P(a new value > a baseline value) + half the ties: 0.5 is no
    /// difference, 1.0 every new value above every old one.
    pub superiority: f64,
    /// One-sided p-value that the new side is higher.
    pub p_higher: f64,
    /// One-sided p-value that the new side is lower.
    pub p_lower: f64,
    /// Hodges-Lehmann estimate of the ratio new / baseline: the median of
    /// the ratios of every pair (one new value, one old). Values <= 0 are
    /// taken as a small positive number.
    pub ratio: f64,
    /// Median of the new side minus median of the baseline.
    pub shift: f64,
}

/// Mann-Whitney U over two weighted samples; `None` when either is empty.
pub fn compare(new: &[(f64, u64)], base: &[(f64, u64)]) -> Option<RankTest> {
    let new = normalise(new);
    let base = normalise(base);
    let n1: u64 = new.iter().map(|x| x.1).sum();
    let n2: u64 = base.iter().map(|x| x.1).sum();
    if n1 == 0 || n2 == 0 {
        return None;
    }
    // Merge by value; a group of equal values shares its mid-rank.
    let (mut i, mut j) = (0, 0);
    let mut rank_before = 0f64;
    let mut r_new = 0f64;
    let mut ties = 0f64;
    while i < new.len() || j < base.len() {
        let v = match (new.get(i), base.get(j)) {
            (Some(a), Some(b)) => a.0.min(b.0),
            (Some(a), None) => a.0,
            (None, Some(b)) => b.0,
            (None, None) => unreachable!(),
        };
        let mut a = 0u64;
        let mut b = 0u64;
        if new.get(i).is_some_and(|x| x.0 == v) {
            a = new[i].1;
            i += 1;
        }
        if base.get(j).is_some_and(|x| x.0 == v) {
            b = base[j].1;
            j += 1;
        }
        let t = (a + b) as f64;
        let mid = rank_before + (t + 1.0) / 2.0;
        r_new += a as f64 * mid;
        ties += t * t * t - t;
        rank_before += t;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let n = f1 + f2;
    let u = r_new - f1 * (f1 + 1.0) / 2.0;
    let mean = f1 * f2 / 2.0;
    let var = f1 * f2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    let (p_higher, p_lower) = if var <= 0.0 {
        // Every value the same: no evidence either way.
        (1.0, 1.0)
    } else {
        let sd = var.sqrt();
        // Continuity correction: U moves in steps of 1/2.
        (
            upper_tail((u - mean - 0.5) / sd),
            upper_tail((mean - u - 0.5) / sd),
        )
    };
    Some(RankTest {
        n_new: n1,
        n_base: n2,
        superiority: u / (f1 * f2),
        p_higher: p_higher.min(1.0),
        p_lower: p_lower.min(1.0),
        ratio: hodges_lehmann_ratio(&new, &base),
        shift: median(&new) - median(&base),
    })
}

/// A latency histogram as weighted values: each bucket's midpoint (µs).
pub fn histogram_values(h: &Histogram) -> Vec<(f64, u64)> {
    h.counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            let (lo, hi) = bounds_us(i);
            let mid = if hi == u64::MAX {
                lo as f64
            } else {
                (lo as f64 + hi as f64) / 2.0
            };
            (mid, *n)
        })
        .collect()
}

/// Plain samples as weighted values.
pub fn sample_values(samples: &[f64]) -> Vec<(f64, u64)> {
    samples
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| (*v, 1))
        .collect()
}

/// Sorted by value, equal values merged, zero counts and NaN dropped.
fn normalise(xs: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut v: Vec<(f64, u64)> = xs
        .iter()
        .copied()
        .filter(|(x, n)| *n > 0 && x.is_finite())
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, u64)> = Vec::with_capacity(v.len());
    for (x, n) in v {
        match out.last_mut() {
            Some(last) if last.0 == x => last.1 += n,
            _ => out.push((x, n)),
        }
    }
    out
}

/// Pairs beyond this are not formed: the ratio then comes from the medians.
const MAX_PAIRS: usize = 250_000;

/// Median of new/base over all pairs, weighted by how often each pair
/// occurs (on a log scale, so it is a ratio of typical values).
fn hodges_lehmann_ratio(new: &[(f64, u64)], base: &[(f64, u64)]) -> f64 {
    let log = |x: f64| x.max(1e-9).ln();
    if new.len().saturating_mul(base.len()) > MAX_PAIRS {
        return (log(median(new)) - log(median(base))).exp();
    }
    let mut pairs: Vec<(f64, f64)> = Vec::with_capacity(new.len() * base.len());
    for a in new {
        for b in base {
            pairs.push((log(a.0) - log(b.0), a.1 as f64 * b.1 as f64));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    let mut seen = 0.0;
    for (d, w) in &pairs {
        seen += w;
        if seen >= total / 2.0 {
            return d.exp();
        }
    }
    1.0
}

fn median(xs: &[(f64, u64)]) -> f64 {
    let total: u64 = xs.iter().map(|x| x.1).sum();
    let mut seen = 0;
    for (x, n) in xs {
        seen += n;
        if seen * 2 >= total {
            return *x;
        }
    }
    xs.last().map(|x| x.0).unwrap_or(0.0)
}

/// P(Z > z) for a standard normal Z.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// How a metric compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    /// Higher than the baseline, significantly and by more than the floor.
    High,
    /// Lower, likewise.
    Low,
    Pass,
    /// Too few samples on either side to say (with how many).
    NoData(String),
}

/// When a shift counts: significant at `alpha` *and* at least
/// `min_ratio` (e.g. 1.25: a quarter higher) in the Hodges-Lehmann sense
/// *and* the medians at least `min_shift` apart (in the values' unit): a
/// 1 ms app that answers in 1.3 ms has moved, but nobody waits for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftRule {
    pub alpha: f64,
    pub min_ratio: f64,
    pub min_shift: f64,
    /// Samples each side needs before anything is said.
    pub min_samples: u64,
}

/// Classifies `new` against `base` under `rule`.
pub fn classify(
    new: &[(f64, u64)],
    base: &[(f64, u64)],
    rule: &ShiftRule,
) -> (Class, Option<RankTest>) {
    let n1: u64 = new.iter().map(|x| x.1).sum();
    let n2: u64 = base.iter().map(|x| x.1).sum();
    if n1 < rule.min_samples || n2 < rule.min_samples {
        return (
            Class::NoData(format!(
                "{n1} new and {n2} baseline samples, {} each needed",
                rule.min_samples
            )),
            None,
        );
    }
    let Some(t) = compare(new, base) else {
        return (Class::NoData("no samples".into()), None);
    };
    let class = if t.p_higher < rule.alpha && t.ratio >= rule.min_ratio && t.shift >= rule.min_shift
    {
        Class::High
    } else if t.p_lower < rule.alpha
        && t.ratio <= 1.0 / rule.min_ratio
        && -t.shift >= rule.min_shift
    {
        Class::Low
    } else {
        Class::Pass
    };
    (class, Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(xs: &[f64]) -> Vec<(f64, u64)> {
        sample_values(xs)
    }

    /// The textbook case: U counted by hand.
    #[test]
    fn u_and_superiority_match_a_hand_count() {
        let new = samples(&[3.0, 4.0, 5.0]);
        let base = samples(&[1.0, 2.0, 3.0]);
        let t = compare(&new, &base).unwrap();
        // Pairs new > base: 3>1,3>2 (2) + tie 3=3 (0.5) + 4>all (3) + 5>all (3) = 8.5 of 9.
        assert!((t.superiority - 8.5 / 9.0).abs() < 1e-12, "{t:?}");
        assert!(t.p_higher < 0.1 && t.p_lower > 0.9);
    }

    #[test]
    fn the_normal_tail_is_right() {
        assert!((upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((upper_tail(-1.644_854) - 0.95).abs() < 1e-6);
        assert!(upper_tail(10.0) < 1e-20);
    }

    #[test]
    fn eight_times_slower_is_seen_in_a_few_dozen_requests() {
        let base: Vec<f64> = (0..400).map(|i| 1.0 + (i % 37) as f64 * 0.01).collect();
        let new: Vec<f64> = (0..30).map(|i| 8.0 + (i % 11) as f64 * 0.08).collect();
        let rule = ShiftRule {
            alpha: 1e-3,
            min_ratio: 1.25,
            min_shift: 0.0,
            min_samples: 20,
        };
        let (class, t) = classify(&samples(&new), &samples(&base), &rule);
        assert_eq!(class, Class::High, "{t:?}");
        assert!(t.unwrap().ratio > 6.0);
    }

    #[test]
    fn a_tiny_real_shift_on_huge_traffic_is_not_a_regression() {
        // 3 % slower, 20,000 samples a side: significant, but under the floor.
        let base: Vec<f64> = (0..20_000).map(|i| 1.0 + (i % 100) as f64 * 0.01).collect();
        let new: Vec<f64> = base.iter().map(|x| x * 1.03).collect();
        let rule = ShiftRule {
            alpha: 1e-3,
            min_ratio: 1.25,
            min_shift: 0.0,
            min_samples: 20,
        };
        let (class, t) = classify(&samples(&new), &samples(&base), &rule);
        let t = t.unwrap();
        assert!(t.p_higher < 1e-3, "the shift is real: {t:?}");
        assert_eq!(class, Class::Pass);
        assert!((t.ratio - 1.03).abs() < 0.01, "{t:?}");
    }

    #[test]
    fn too_few_samples_is_no_data_never_a_pass() {
        let rule = ShiftRule {
            alpha: 1e-3,
            min_ratio: 1.25,
            min_shift: 0.0,
            min_samples: 20,
        };
        let (class, _) = classify(&samples(&[9.0; 5]), &samples(&[1.0; 100]), &rule);
        assert!(matches!(class, Class::NoData(why) if why.contains("5 new")));
    }

    #[test]
    fn all_equal_values_say_nothing() {
        let t = compare(&samples(&[2.0; 50]), &samples(&[2.0; 50])).unwrap();
        assert_eq!((t.p_higher, t.p_lower), (1.0, 1.0));
        assert!((t.superiority - 0.5).abs() < 1e-12);
    }
}
