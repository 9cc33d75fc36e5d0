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
}
