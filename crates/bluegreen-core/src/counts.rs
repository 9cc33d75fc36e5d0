//! Tests on counts, for error rates: is a window's share of failures
//! significantly above a limit, or above the baseline's? A rate alone is
//! not evidence: one 5xx among the first 20 requests is 5 %, five times a
//! 1 % limit, and says nothing; a hundred failures in a row say everything.
//! Judged at every 100 ms look, so a real breakage still rolls back at once.

/// P(X >= k) for X ~ Binomial(n, p), summed exactly from k (the terms fall
/// once past the mean, so the sum stops early).
pub fn binomial_at_least(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // ln C(n, k), by the product of (n - k + j) / j.
    let mut ln_choose = 0.0;
    for j in 1..=k {
        ln_choose += ((n - k + j) as f64).ln() - (j as f64).ln();
    }
    let mut ln_term = ln_choose + k as f64 * lp + (n - k) as f64 * lq;
    let mut sum = 0.0;
    let mut i = k;
    loop {
        let term = ln_term.exp();
        sum += term;
        if i == n || (i as f64 > n as f64 * p && term < sum * 1e-12) {
            return sum.min(1.0);
        }
        // term(i + 1) = term(i) * (n - i) / (i + 1) * p / q
        ln_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + lp - lq;
        i += 1;
    }
}

/// Is `errors` of `requests` significantly above the rate `limit`?
/// Returns the p-value (small: above).
pub fn above_limit(errors: u64, requests: u64, limit: f64) -> f64 {
    if requests == 0 || errors as f64 <= requests as f64 * limit {
        return 1.0;
    }
    binomial_at_least(errors, requests, limit)
}

/// Is the new side's error rate significantly above the baseline's? Given
/// the failures of both, each is the new side's with probability
/// `n_new / (n_new + n_base)` when the rates are equal: the new side's
/// share of them against that binomial (the conditional test for two
/// rates). Returns the p-value.
pub fn above_baseline(e_new: u64, n_new: u64, e_base: u64, n_base: u64) -> f64 {
    if n_new == 0 || n_base == 0 || e_new == 0 {
        return 1.0;
    }
    binomial_at_least(
        e_new,
        e_new + e_base,
        n_new as f64 / (n_new + n_base) as f64,
    )
}

/// The most a baseline's dispersion is taken to be: past this the test
/// against the baseline would be blind, and a rate that wanders that much
/// is judged by `max_error_rate` alone.
pub const MAX_DISPERSION: f64 = 10.0;

/// How much more a baseline's failure rate varies from slice to slice
/// (`(errors, requests)` of equal stretches of time) than one constant
/// rate would: Pearson's chi-square over its degrees of freedom, never
/// below one. Real error rates wander (a cache cools, a client retries, a batch
/// runs); the binomial tests assume they do not, and at ten thousand
/// requests a window read that wander as evidence. Dividing the counts by
/// it before the test (the quasi-binomial) makes the test as sure as the
/// baseline's own variation allows. 1 when there is too little to tell
/// (fewer than 3 slices with traffic, or no failures).
pub fn dispersion(slices: &[(u64, u64)]) -> f64 {
    let used: Vec<(f64, f64)> = slices
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|&(e, n)| (e as f64, n as f64))
        .collect();
    let (e, n) = used
        .iter()
        .fold((0.0, 0.0), |(e, n), (ei, ni)| (e + ei, n + ni));
    if used.len() < 3 || e == 0.0 || e >= n {
        return 1.0;
    }
    let p = e / n;
    let chi: f64 = used
        .iter()
        .map(|(ei, ni)| (ei - ni * p).powi(2) / (ni * p * (1.0 - p)))
        .sum();
    (chi / (used.len() - 1) as f64).clamp(1.0, MAX_DISPERSION)
}

/// [`above_baseline`] with every count divided by the baseline's
/// `dispersion` (see [`dispersion`]): the quasi-binomial version.
pub fn above_baseline_dispersed(
    e_new: u64,
    n_new: u64,
    e_base: u64,
    n_base: u64,
    dispersion: f64,
) -> f64 {
    let d = dispersion.max(1.0);
    let scale = |x: u64| (x as f64 / d).round() as u64;
    above_baseline(
        scale(e_new),
        scale(n_new).max(1),
        scale(e_base),
        scale(n_base).max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_hand_counts() {
        // P(X >= 3 | 4, 0.5) = (4 + 1) / 16.
        assert!((binomial_at_least(3, 4, 0.5) - 5.0 / 16.0).abs() < 1e-12);
        assert!((binomial_at_least(1, 20, 0.01) - (1.0 - 0.99f64.powi(20))).abs() < 1e-12);
        assert_eq!(binomial_at_least(0, 5, 0.3), 1.0);
        assert_eq!(binomial_at_least(6, 5, 0.3), 0.0);
        // Large n stays finite and sensible.
        let p = binomial_at_least(150, 10_000, 0.01);
        assert!(p > 1e-7 && p < 1e-4, "{p}");
    }

    #[test]
    fn one_early_error_is_not_evidence_many_are() {
        assert!(above_limit(1, 20, 0.01) > 0.1, "1 of 20 against 1 %");
        assert!(above_limit(20, 20, 0.01) < 1e-30, "all failing");
        assert!(above_limit(6, 20, 0.01) < 1e-6, "30 % failing");
        assert_eq!(above_limit(5, 1000, 0.01), 1.0, "below the limit");
    }

    #[test]
    fn against_the_baseline() {
        // 3 against 1 in equal traffic: noise.
        assert!(above_baseline(3, 100, 1, 100) > 0.1);
        // 0.7 % against 0.2 % over 12,000 and 6,000 requests: real.
        assert!(above_baseline(84, 12_000, 12, 6_000) < 1e-4);
        assert_eq!(above_baseline(0, 100, 5, 100), 1.0);
    }

    #[test]
    fn dispersion_of_a_steady_rate_is_one_of_a_wandering_rate_more() {
        // The same 0.2 % in every slice: no more variation than counting.
        assert_eq!(dispersion(&[(2, 1000); 12]), 1.0);
        // 0 and 10 of 1,000 in turn around 0.5 %: chi-square about 60
        // over 11 degrees of freedom.
        let wander: Vec<(u64, u64)> = (0..12)
            .map(|i| (if i % 2 == 0 { 0 } else { 10 }, 1000))
            .collect();
        let d = dispersion(&wander);
        assert!(d > 4.0 && d < 7.0, "{d}");
        // Too little to tell.
        assert_eq!(dispersion(&[(0, 1000); 12]), 1.0);
        assert_eq!(dispersion(&[(0, 1000), (10, 1000)]), 1.0);
        // Capped.
        assert_eq!(
            dispersion(&[(0, 100_000), (5000, 100_000), (0, 100_000)]),
            MAX_DISPERSION
        );
    }

    #[test]
    fn a_wandering_baseline_asks_for_more_evidence() {
        // Twice a 0.2 % baseline over 10,000 requests: significant for a
        // steady rate, noise for one that wanders by 2.8 (the bench's).
        assert!(above_baseline_dispersed(40, 10_000, 120, 60_000, 1.0) < 1e-3);
        assert!(above_baseline_dispersed(40, 10_000, 120, 60_000, 2.8) > 1e-3);
        // A real breakage stays evident: 5 % against 0.2 %.
        assert!(above_baseline_dispersed(500, 10_000, 120, 60_000, 2.8) < 1e-30);
    }
}
