//! Bake analysis: is the new live side as good as the old one was? Pure
//! functions over traffic windows, so every verdict is unit-tested.

use crate::analysis::{MetricVerdict, Reading};
use crate::counts;
use crate::latency::Histogram;
use crate::rank::{self, Class, ShiftRule};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Live traffic of one side over some stretch of time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub requests: u64,
    /// 5xx answers and upstream failures (connect errors, timeouts).
    pub errors: u64,
    /// 4xx answers: the client's, unless far more than the old side gives
    /// the same users (sessions lost, a route gone).
    #[serde(default)]
    pub client_errors: u64,
    /// The 4xx a surge is named by ([`NAMED_4XX`]: 401, 403, 404, 429), so a
    /// rollback says "401s" rather than "4xx".
    #[serde(default, skip_serializing_if = "is_zero")]
    pub named_4xx: [u64; 4],
    pub latency: Histogram,
}

/// The client errors counted apart: lost sessions (401), a permission
/// broken (403), a route gone (404), a limit too tight (429).
pub const NAMED_4XX: [u16; 4] = [401, 403, 404, 429];

fn is_zero(x: &[u64; 4]) -> bool {
    x.iter().all(|n| *n == 0)
}

impl Window {
    /// `self - earlier`, for cumulative counters.
    pub fn since(&self, earlier: &Window) -> Window {
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            client_errors: self.client_errors.saturating_sub(earlier.client_errors),
            named_4xx: std::array::from_fn(|i| {
                self.named_4xx[i].saturating_sub(earlier.named_4xx[i])
            }),
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// `self + other`: the traffic of two nodes together.
    pub fn plus(&self, other: &Window) -> Window {
        Window {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            client_errors: self.client_errors + other.client_errors,
            named_4xx: std::array::from_fn(|i| self.named_4xx[i] + other.named_4xx[i]),
            latency: self.latency.plus(&other.latency),
        }
    }

    /// Fraction of requests that failed (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Fraction of requests answered 4xx (0 when there were none).
    pub fn client_error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.client_errors as f64 / self.requests as f64
        }
    }

    /// 99th percentile latency, if anything was measured.
    pub fn p99(&self) -> Option<Duration> {
        self.latency.quantile(0.99)
    }
}

/// What the bake compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Windows smaller than this are not judged.
    pub min_requests: u64,
    /// Absolute error-rate limit (fraction, 0..=1): a breach once the
    /// window's failures are significantly above it (at `significance`).
    pub max_error_rate: f64,
    /// One-sided p-value the error tests must reach: 0.001 by default, so
    /// one early 5xx never rolls back and a real breakage does at once.
    pub significance: f64,
    /// Absolute p99 limit.
    pub max_p99: Option<Duration>,
    /// Limit relative to the old side's error rate: a breach when the new
    /// side's is this many times it, 0.1 points above it at least, and
    /// significantly so.
    pub error_rate_ratio: Option<f64>,
    /// Limit relative to the old side's p99.
    pub p99_ratio: Option<f64>,
    /// How far the new side's 4xx rate may rise above the old side's (in
    /// points, 0..=1) before it is a breach (and only when also above
    /// twice the old side's); judged only against a baseline.
    pub max_4xx_increase: Option<f64>,
    /// The whole latency distribution against the baseline's with a rank
    /// test (Mann-Whitney U) and an effect-size floor: sees an 8x slower
    /// release in a few dozen requests, where a p99 needs 500.
    pub latency_shift: Option<ShiftRule>,
}

/// A breached limit with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// `error_rate` or `p99`.
    pub metric: String,
    pub observed: f64,
    pub limit: f64,
    /// The old side's value, when the limit came from it.
    pub baseline: Option<f64>,
    pub requests: u64,
    /// One line for humans.
    pub summary: String,
}

/// Outcome of judging one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Fewer than `min_requests`: keep accumulating.
    NotEnoughTraffic,
    /// Error rate within limits, but too few requests to judge the p99
    /// (see [`MIN_TAIL`]): says how many there were and how many it needs.
    Inconclusive(String),
    Breach(Breach),
}

/// A p99 is judged only when at least this many requests lie at or above
/// it (500 requests for a p99): with fewer, "the p99" is one or two slow
/// requests, and one slow request must never roll back a release.
pub const MIN_TAIL: u64 = 5;

/// Requests a window needs before its `q` quantile is judged.
pub fn needed_for(q: f64) -> u64 {
    (MIN_TAIL as f64 / (1.0 - q)).ceil() as u64
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The smallest rise over the baseline's error rate that counts (0.1
/// points: one request in a thousand more failing).
pub const MIN_ERROR_INCREASE: f64 = 0.001;

/// The error-rate tests alone (cheap, run at every look): significantly
/// above `max_error_rate`, or above the baseline's by `error_rate_ratio`
/// and [`MIN_ERROR_INCREASE`], significantly once the counts are divided
/// by the baseline's `dispersion` (see [`counts::dispersion`]; 1 for
/// none). `baseline` must already be one worth comparing with; without
/// one only the absolute limit is judged.
pub fn judge_errors(
    window: &Window,
    baseline: Option<&Window>,
    t: &Thresholds,
    dispersion: f64,
) -> Option<Breach> {
    let n = window.requests;
    if n < t.min_requests.max(1) || window.errors == 0 {
        return None;
    }
    let rate = window.error_rate();
    let p = counts::above_limit(window.errors, n, t.max_error_rate);
    if p < t.significance {
        return Some(Breach {
            metric: "error_rate".into(),
            observed: rate,
            limit: t.max_error_rate,
            baseline: baseline.map(Window::error_rate),
            requests: n,
            summary: format!(
                "error rate {} > limit {} over {n} requests (binomial p = {p:.1e})",
                pct(rate),
                pct(t.max_error_rate)
            ),
        });
    }
    let (ratio, b) = (t.error_rate_ratio?, baseline?);
    let base = b.error_rate();
    if rate < base * ratio || rate - base < MIN_ERROR_INCREASE {
        return None;
    }
    let p = counts::above_baseline_dispersed(window.errors, n, b.errors, b.requests, dispersion);
    let spread = if dispersion > 1.0 {
        format!(", its rate wandering {dispersion:.1}x a steady one's")
    } else {
        String::new()
    };
    (p < t.significance).then(|| Breach {
        metric: "error_rate".into(),
        observed: rate,
        limit: (base * ratio).max(base + MIN_ERROR_INCREASE),
        baseline: Some(base),
        requests: n,
        summary: format!(
            "error rate {} > {ratio}x the old side's {} over {n} requests (p = {p:.1e} against {} of {}{spread})",
            pct(rate),
            pct(base),
            b.errors,
            b.requests
        ),
    })
}

/// Judges the new side's window against absolute limits and the old side's
/// baseline. The baseline is used only when it saw `min_requests` itself.
/// Errors are judged here against `max_error_rate` only: against the
/// baseline's rate they are judged over the whole bake ([`BakeWindows`]),
/// since one window's rate wanders too much to compare with a baseline
/// taken at another minute.
pub fn judge(window: &Window, baseline: Option<&Window>, t: &Thresholds) -> Verdict {
    if window.requests < t.min_requests.max(1) {
        return Verdict::NotEnoughTraffic;
    }
    let baseline = baseline.filter(|b| b.requests >= t.min_requests.max(1));
    if let Some(b) = judge_errors(window, None, t, 1.0) {
        return Verdict::Breach(b);
    }
    let n = window.requests;
    // A surge of 4xx the old side does not give (401s for every logged-in
    // user after a lost session store): judged like latency, over whole
    // windows, since a client's own mistakes come in bursts too.
    if let (Some(inc), Some(b)) = (t.max_4xx_increase, baseline) {
        let (now, base) = (window.client_error_rate(), b.client_error_rate());
        if now > base + inc && now > base * 2.0 {
            return Verdict::Breach(Breach {
                metric: "4xx_rate".into(),
                observed: now,
                limit: base + inc,
                baseline: Some(base),
                requests: n,
                summary: format!(
                    "4xx rate {} > the old side's {} + {} over {n} requests{}",
                    pct(now),
                    pct(base),
                    pct(inc),
                    surge_by_code(window, b)
                ),
            });
        }
    }
    // The rank test first: it needs dozens of requests, not hundreds.
    let mut shift_unjudged = None;
    if let (Some(rule), Some(b)) = (t.latency_shift, baseline) {
        let (class, test) = rank::classify(
            &rank::histogram_values(&window.latency),
            &rank::histogram_values(&b.latency),
            &rule,
        );
        match (class, test) {
            (Class::High, Some(r)) => {
                let median = |w: &Window| w.latency.quantile(0.5).map(ms).unwrap_or(0.0);
                return Verdict::Breach(Breach {
                    metric: "latency".into(),
                    observed: r.ratio,
                    limit: rule.min_ratio,
                    baseline: Some(median(b)),
                    requests: n,
                    summary: format!(
                        "latency {:.2}x the old side's (median {:.1} ms against {:.1} ms; Mann-Whitney p = {:.1e} over {} and {} requests) > limit {:.2}x",
                        r.ratio,
                        median(window),
                        median(b),
                        r.p_higher,
                        r.n_new,
                        r.n_base,
                        rule.min_ratio
                    ),
                });
            }
            (Class::NoData(why), _) => shift_unjudged = Some(why),
            _ => {}
        }
    }
    let Some(p99) = window.p99() else {
        return Verdict::Pass;
    };
    if t.max_p99.is_none() && t.p99_ratio.is_none() {
        return match shift_unjudged {
            Some(why) => Verdict::Inconclusive(format!("latency not compared: {why}")),
            None => Verdict::Pass,
        };
    }
    // Only timed answers count for latency (a client's own mistakes are not timed).
    let timed = window.latency.total();
    let needed = needed_for(0.99);
    if timed < needed {
        return Verdict::Inconclusive(format!(
            "p99 not judged: {timed} of the {needed} requests it needs"
        ));
    }
    if let Some(max) = t.max_p99 {
        if p99 > max {
            return Verdict::Breach(Breach {
                metric: "p99".into(),
                observed: ms(p99),
                limit: ms(max),
                baseline: baseline.and_then(Window::p99).map(ms),
                requests: n,
                summary: format!(
                    "p99 latency {:.1} ms > limit {:.1} ms over {n} requests",
                    ms(p99),
                    ms(max)
                ),
            });
        }
    }
    // The baseline's p99 needs its own tail, or one slow old request sets the bar.
    let base_p99 = baseline
        .filter(|b| b.latency.total() >= needed)
        .and_then(Window::p99);
    if let (Some(ratio), Some(base)) = (t.p99_ratio, base_p99) {
        if ms(p99) > ms(base) * ratio {
            return Verdict::Breach(Breach {
                metric: "p99".into(),
                observed: ms(p99),
                limit: ms(base) * ratio,
                baseline: Some(ms(base)),
                requests: n,
                summary: format!(
                    "p99 latency {:.1} ms > {ratio}x the old side's {:.1} ms over {n} requests",
                    ms(p99),
                    ms(base)
                ),
            });
        }
    }
    Verdict::Pass
}

/// The named 4xx whose rate rose most over the baseline's, as
/// `"; mostly 401 (88.00% against 0.10%)"` (empty when none rose).
fn surge_by_code(w: &Window, b: &Window) -> String {
    let rate = |x: &Window, i: usize| {
        if x.requests == 0 {
            0.0
        } else {
            x.named_4xx[i] as f64 / x.requests as f64
        }
    };
    (0..NAMED_4XX.len())
        .map(|i| (i, rate(w, i) - rate(b, i)))
        .filter(|(_, rise)| *rise > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| {
            format!(
                "; mostly {} ({} against {})",
                NAMED_4XX[i],
                pct(rate(w, i)),
                pct(rate(b, i))
            )
        })
        .unwrap_or_default()
}

/// The router's side of the report: the window's numbers beside the
/// baseline's and the limits, one row each; its errors judged against the
/// baseline with the baseline's `dispersion`, as over the whole bake.
pub fn rows(
    window: &Window,
    baseline: Option<&Window>,
    t: &Thresholds,
    dispersion: f64,
) -> Vec<Reading> {
    let baseline = baseline.filter(|b| b.requests >= t.min_requests.max(1));
    let errors_high = judge_errors(window, baseline, t, dispersion).is_some();
    let verdict_of = |v: &Verdict, metric: &str| match v {
        Verdict::Breach(b) if b.metric == metric => MetricVerdict::High,
        Verdict::NotEnoughTraffic => MetricVerdict::NoData,
        _ => MetricVerdict::Pass,
    };
    let v = judge(window, baseline, t);
    let pct = |x: f64| (x * 10_000.0).round() / 100.0;
    let median = |w: &Window| w.latency.quantile(0.5).map(ms);
    let mut out = vec![
        Reading {
            name: "requests".into(),
            new: Some(window.requests as f64),
            baseline: baseline.map(|b| b.requests as f64),
            unit: String::new(),
            limit: format!("≥ {}", t.min_requests),
            verdict: if window.requests >= t.min_requests.max(1) {
                MetricVerdict::Pass
            } else {
                MetricVerdict::NoData
            },
            detail: String::new(),
        },
        Reading {
            name: "error_rate".into(),
            new: Some(pct(window.error_rate())),
            baseline: baseline.map(|b| pct(b.error_rate())),
            unit: "%".into(),
            limit: match t.error_rate_ratio {
                Some(r) => format!("≤ {}%, ≤ {r}x baseline", pct(t.max_error_rate)),
                None => format!("≤ {}%", pct(t.max_error_rate)),
            },
            verdict: if errors_high {
                MetricVerdict::High
            } else {
                verdict_of(&v, "error_rate")
            },
            detail: if dispersion > 1.0 {
                format!("baseline's rate wanders {dispersion:.1}x a steady one's")
            } else {
                String::new()
            },
        },
    ];
    if let Some(inc) = t.max_4xx_increase {
        out.push(Reading {
            name: "4xx_rate".into(),
            new: Some(pct(window.client_error_rate())),
            baseline: baseline.map(|b| pct(b.client_error_rate())),
            unit: "%".into(),
            limit: format!("≤ baseline + {}%", pct(inc)),
            verdict: if baseline.is_none() {
                MetricVerdict::NoData
            } else {
                verdict_of(&v, "4xx_rate")
            },
            detail: String::new(),
        });
    }
    if let Some(rule) = t.latency_shift {
        out.push(Reading {
            name: "latency".into(),
            new: median(window),
            baseline: baseline.and_then(median),
            unit: "ms".into(),
            limit: format!("≤ {}x baseline (median, rank test)", rule.min_ratio),
            verdict: match &v {
                Verdict::Breach(b) if b.metric == "latency" => MetricVerdict::High,
                Verdict::Inconclusive(w) if w.starts_with("latency") => MetricVerdict::NoData,
                _ if baseline.is_none() => MetricVerdict::NoData,
                v => verdict_of(v, "latency"),
            },
            detail: String::new(),
        });
    }
    if t.max_p99.is_some() || t.p99_ratio.is_some() {
        let mut limit = Vec::new();
        if let Some(m) = t.max_p99 {
            limit.push(format!("≤ {:.1} ms", ms(m)));
        }
        if let Some(r) = t.p99_ratio {
            limit.push(format!("≤ {r}x baseline"));
        }
        out.push(Reading {
            name: "p99".into(),
            new: window.p99().map(ms),
            baseline: baseline.and_then(Window::p99).map(ms),
            unit: "ms".into(),
            limit: limit.join(", "),
            verdict: match &v {
                Verdict::Inconclusive(w) if w.starts_with("p99") => MetricVerdict::NoData,
                v => verdict_of(v, "p99"),
            },
            detail: String::new(),
        });
    }
    out
}

/// The breach of an absolute limit (`max_error_rate`, `max_p99`) in a
/// window of at least `min_requests`, if any. What one node may judge on
/// its own traffic when nobody judges the whole bake: no baseline, and no
/// verdict but "breached" (too little traffic, or none, decides nothing).
pub fn absolute_breach(window: &Window, t: &Thresholds) -> Option<Breach> {
    match judge(window, None, t) {
        Verdict::Breach(b) => Some(b),
        _ => None,
    }
}

/// What one look at the bake's current window decided.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowEnd {
    /// Nothing to report: the window stays open.
    Open,
    /// The window closed (or, too small, was reported and keeps growing).
    Closed {
        number: u32,
        window: Window,
        verdict: Verdict,
        /// Why it was not a plain pass (inconclusive, a latency strike).
        detail: Option<String>,
    },
    /// Roll back now.
    Breach(Breach),
}

/// The bake's windows over cumulative counters: which one is open, how many
/// latency breaches in a row, what was judged. Pure, so the rules are tested
/// without a router: errors breach at once; a latency breach must hold for
/// `consecutive` closed windows; a window too small for its p99 (or for
/// `min_requests`) keeps growing rather than closing.
#[derive(Debug, Clone)]
pub struct BakeWindows {
    /// Where the bake began: errors are also judged over all of it.
    start: Window,
    /// The baseline's [`counts::dispersion`]: 1 unless told.
    dispersion: f64,
    opened_at: Window,
    consecutive: u32,
    strikes: u32,
    number: u32,
    judged: u32,
    inconclusive: Option<String>,
}

impl BakeWindows {
    /// Windows starting from the counters at `start`.
    pub fn new(start: Window, consecutive: u32) -> BakeWindows {
        BakeWindows {
            start: start.clone(),
            dispersion: 1.0,
            opened_at: start,
            consecutive: consecutive.max(1),
            strikes: 0,
            number: 1,
            judged: 0,
            inconclusive: None,
        }
    }

    /// The baseline's error rate wanders this much more than a steady
    /// rate's (see [`counts::dispersion`]): the test against it asks for
    /// that much more evidence.
    pub fn with_dispersion(mut self, dispersion: f64) -> BakeWindows {
        self.dispersion = dispersion.max(1.0);
        self
    }

    /// Judges the window up to `now` (cumulative counters); `closing` says
    /// the window's time is up.
    pub fn observe(
        &mut self,
        now: &Window,
        baseline: Option<&Window>,
        t: &Thresholds,
        closing: bool,
    ) -> WindowEnd {
        let window = now.since(&self.opened_at);
        // Errors at every look: against `max_error_rate` over the window
        // (a sudden breakage) and the whole bake (a slow trickle); against
        // the baseline's rate over the whole bake only, where one window's
        // wander is diluted (measured: at 10,000 requests a window the
        // per-window test rolled back 80 of 200 good releases, bench/NOTES.md).
        let base = baseline.filter(|b| b.requests >= t.min_requests.max(1));
        let whole = now.since(&self.start);
        if let Some(b) = judge_errors(&window, None, t, 1.0)
            .or_else(|| judge_errors(&whole, base, t, self.dispersion))
        {
            return WindowEnd::Breach(b);
        }
        if !closing {
            return WindowEnd::Open;
        }
        let verdict = judge(&window, baseline, t);
        match verdict {
            Verdict::Breach(b) if b.metric == "error_rate" => WindowEnd::Breach(b),
            Verdict::Breach(mut b) => {
                self.strikes += 1;
                if self.strikes >= self.consecutive {
                    b.summary = format!("{} in {} windows in a row", b.summary, self.strikes);
                    return WindowEnd::Breach(b);
                }
                let detail = format!(
                    "{} ({} of {} windows in a row needed to roll back)",
                    b.summary, self.strikes, self.consecutive
                );
                self.close(
                    now,
                    window,
                    Verdict::Inconclusive(detail.clone()),
                    Some(detail),
                )
            }
            Verdict::Pass => {
                self.strikes = 0;
                self.judged += 1;
                self.inconclusive = None;
                self.close(now, window, Verdict::Pass, None)
            }
            // Too small: reported, and the window grows on (not closed).
            Verdict::Inconclusive(why) => {
                self.inconclusive = Some(why.clone());
                WindowEnd::Closed {
                    number: self.number,
                    window,
                    verdict: Verdict::Inconclusive(why.clone()),
                    detail: Some(why),
                }
            }
            Verdict::NotEnoughTraffic => WindowEnd::Closed {
                number: self.number,
                window,
                verdict: Verdict::NotEnoughTraffic,
                detail: None,
            },
        }
    }

    fn close(
        &mut self,
        now: &Window,
        window: Window,
        verdict: Verdict,
        detail: Option<String>,
    ) -> WindowEnd {
        let number = self.number;
        self.number += 1;
        self.opened_at = now.clone();
        WindowEnd::Closed {
            number,
            window,
            verdict,
            detail,
        }
    }

    /// What a passed bake must add: nothing when windows were judged whole,
    /// else what was never judged and why.
    pub fn caveat(&self) -> String {
        match (&self.inconclusive, self.judged) {
            (Some(why), _) => format!(" (latency inconclusive: {why})"),
            (None, 0) => " (too little traffic to judge)".into(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::bucket;

    fn window(requests: u64, errors: u64, latency: Duration) -> Window {
        let mut w = Window {
            requests,
            errors,
            ..Window::default()
        };
        w.latency.counts[bucket(latency)] = requests;
        w
    }

    fn limits() -> Thresholds {
        Thresholds {
            min_requests: 20,
            max_error_rate: 0.05,
            significance: 0.001,
            max_p99: Some(Duration::from_secs(1)),
            error_rate_ratio: Some(2.0),
            p99_ratio: Some(1.5),
            max_4xx_increase: Some(0.2),
            latency_shift: None,
        }
    }

    fn ranked() -> Thresholds {
        Thresholds {
            max_p99: None,
            p99_ratio: None,
            latency_shift: Some(ShiftRule {
                alpha: 1e-3,
                min_ratio: 1.25,
                min_shift: 2_000.0,
                min_samples: 20,
            }),
            ..limits()
        }
    }

    /// At 40 requests a second a window holds a few dozen: enough for the
    /// rank test to see an 8x slower release, never for a p99.
    #[test]
    fn a_slow_release_is_seen_by_the_rank_test_in_dozens_of_requests() {
        let base = window(300, 0, Duration::from_micros(1_200));
        let mut base = base;
        base.latency.counts[bucket(Duration::from_micros(1_500))] += 100;
        base.requests += 100;
        let mut slow = window(40, 0, Duration::from_micros(9_600));
        slow.latency.counts[bucket(Duration::from_micros(11_000))] += 5;
        slow.requests += 5;
        match judge(&slow, Some(&base), &ranked()) {
            Verdict::Breach(b) => {
                assert_eq!(b.metric, "latency");
                assert!(b.observed > 6.0, "{b:?}");
                assert!(b.summary.contains("Mann-Whitney"), "{}", b.summary);
            }
            v => panic!("{v:?}"),
        }
        // The same traffic as the old side passes; too little is inconclusive.
        assert_eq!(judge(&base, Some(&base), &ranked()), Verdict::Pass);
        let few = window(25, 0, Duration::from_micros(1_200));
        let t = Thresholds {
            min_requests: 10,
            ..ranked()
        };
        let mut tiny = window(12, 0, Duration::from_micros(9_600));
        tiny.requests = 12;
        assert_eq!(judge(&few, Some(&base), &t), Verdict::Pass);
        assert!(
            matches!(judge(&tiny, Some(&base), &t), Verdict::Inconclusive(w) if w.contains("12 new")),
        );
    }

    /// 4xx surges judged against the old side's rate: a tenth more of them
    /// passes, every user answered 401 does not; without a baseline, never.
    #[test]
    fn a_4xx_surge_against_the_old_side_is_a_breach() {
        let with = |requests, client_errors| Window {
            client_errors,
            named_4xx: [client_errors - client_errors / 10, 0, client_errors / 10, 0],
            ..window(requests, 0, Duration::from_millis(1))
        };
        let base = with(1000, 50);
        let passes = |v: Verdict| !matches!(v, Verdict::Breach(_));
        assert!(passes(judge(&with(100, 6), Some(&base), &limits())));
        match judge(&with(100, 90), Some(&base), &limits()) {
            Verdict::Breach(b) => {
                assert_eq!(b.metric, "4xx_rate");
                assert!(b.summary.contains("4xx rate 90.00%"), "{}", b.summary);
                assert!(b.summary.contains("mostly 401 (81.00%"), "{}", b.summary);
            }
            v => panic!("{v:?}"),
        }
        assert!(passes(judge(&with(100, 90), None, &limits())));
    }

    /// The watchdog's judge: absolute limits only, never on a small window,
    /// and a window twice as bad as the old side but under the limits is
    /// not its business (the whole bake judges that).
    #[test]
    fn absolute_breach_sees_only_absolute_limits_on_enough_traffic() {
        let t = limits();
        assert_eq!(
            absolute_breach(&window(19, 19, Duration::from_millis(1)), &t),
            None
        );
        let b = absolute_breach(&window(100, 30, Duration::from_millis(1)), &t).unwrap();
        assert_eq!(
            (b.metric.as_str(), b.observed, b.limit),
            ("error_rate", 0.3, 0.05)
        );
        assert_eq!(b.baseline, None);
        let slow = absolute_breach(&window(600, 0, Duration::from_secs(3)), &t).unwrap();
        assert_eq!(slow.metric, "p99");
        // 4% errors: under the limit; the ratio to a baseline is not judged.
        assert_eq!(
            absolute_breach(&window(100, 4, Duration::from_millis(1)), &t),
            None
        );
    }

    #[test]
    fn small_windows_are_not_judged() {
        let w = window(5, 5, Duration::from_secs(9));
        assert_eq!(judge(&w, None, &limits()), Verdict::NotEnoughTraffic);
    }

    #[test]
    fn healthy_window_passes() {
        let w = window(600, 1, Duration::from_millis(5));
        let base = window(600, 1, Duration::from_millis(5));
        assert_eq!(judge(&w, Some(&base), &limits()), Verdict::Pass);
    }

    #[test]
    fn absolute_error_rate_breaches_with_numbers() {
        let w = window(100, 30, Duration::from_millis(5));
        let Verdict::Breach(b) = judge(&w, None, &limits()) else {
            panic!()
        };
        assert_eq!(b.metric, "error_rate");
        assert!((b.observed - 0.3).abs() < 1e-9);
        assert!(
            b.summary.contains("30.00%") && b.summary.contains("5.00%"),
            "{}",
            b.summary
        );
    }

    #[test]
    fn ratio_against_baseline() {
        let t = limits();
        // 3 errors against 1 in equal traffic: noise, never a rollback.
        let base = window(100, 1, Duration::from_millis(10));
        let w = window(100, 3, Duration::from_millis(10));
        assert_eq!(judge_errors(&w, Some(&base), &t, 1.0), None);
        // 2 % against 0.5 % over thousands of requests: significant.
        let base = window(4000, 20, Duration::from_millis(10));
        let w = window(4000, 80, Duration::from_millis(10));
        let b = judge_errors(&w, Some(&base), &t, 1.0).expect("a breach");
        assert_eq!(b.baseline, Some(0.005));
        assert!(
            b.summary.contains("2x the old side's 0.50%"),
            "{}",
            b.summary
        );
        // A window alone is judged against the absolute 5 % only: against
        // the baseline, errors are judged over the whole bake.
        assert!(!matches!(judge(&w, Some(&base), &t), Verdict::Breach(_)));
        assert_eq!(judge_errors(&w, None, &t, 1.0), None);
        // A zero-error baseline still compares (the rise is significant).
        let clean = window(4000, 0, Duration::from_millis(10));
        assert!(judge_errors(&w, Some(&clean), &t, 1.0).is_some());
        // A baseline whose rate wandered asks for more: 2x over 4,000
        // requests is within what a rate wandering 5x a steady one's gives.
        let b = judge_errors(&w, Some(&base), &t, 5.0);
        assert_eq!(b, None);
        let w = window(4000, 200, Duration::from_millis(10));
        let b = judge_errors(&w, Some(&base), &t, 5.0).expect("5 % against 0.5 %");
        assert!(b.summary.contains("wandering 5.0x"), "{}", b.summary);
        // A baseline below min_requests is ignored.
        let tiny = window(3, 0, Duration::from_millis(1));
        let slow = window(600, 0, Duration::from_millis(40));
        assert_eq!(judge(&slow, Some(&tiny), &t), Verdict::Pass);
    }

    /// Against the baseline, the whole bake is judged, not a window: a
    /// window at twice the baseline's rate among calm ones is the rate's
    /// wander; twice it all along is a regression.
    #[test]
    fn errors_against_the_baseline_over_the_whole_bake() {
        let t = limits();
        let base = window(60_000, 120, Duration::from_millis(10));
        let mut now = Window::default();
        let mut b = BakeWindows::new(now.clone(), 2);
        for (i, errors) in [20, 20, 45, 20, 20].into_iter().enumerate() {
            grow(&mut now, 10_000, errors, Duration::from_millis(10));
            let end = b.observe(&now, Some(&base), &t, true);
            assert!(!matches!(end, WindowEnd::Breach(_)), "window {i}: {end:?}");
        }
        let mut now = Window::default();
        let mut b = BakeWindows::new(now.clone(), 2);
        let mut breached = None;
        for i in 0..5 {
            grow(&mut now, 10_000, 45, Duration::from_millis(10));
            if let WindowEnd::Breach(x) = b.observe(&now, Some(&base), &t, true) {
                breached = Some((i, x));
                break;
            }
        }
        let (i, x) = breached.expect("twice the baseline all along");
        assert!(i <= 1, "caught in window {}", i + 1);
        assert_eq!(x.metric, "error_rate");
    }

    /// One 5xx among a window's first requests is above any small limit as
    /// a rate, and no evidence: never a rollback; all of them failing is.
    #[test]
    fn one_early_error_never_rolls_back() {
        let t = Thresholds {
            max_error_rate: 0.01,
            ..limits()
        };
        let one = window(20, 1, Duration::from_millis(5));
        assert!(!matches!(judge(&one, None, &t), Verdict::Breach(_)));
        let all = window(20, 20, Duration::from_millis(5));
        assert!(
            matches!(judge(&all, None, &t), Verdict::Breach(b) if b.summary.contains("binomial p"))
        );
    }

    #[test]
    fn p99_of_too_few_requests_is_inconclusive_never_a_breach() {
        // The false rollback: 87 requests, one of them slow.
        let base = window(600, 0, Duration::from_micros(4_200));
        let mut w = window(86, 0, Duration::from_millis(4));
        w.requests = 87;
        w.latency.counts[bucket(Duration::from_millis(15))] += 1;
        match judge(&w, Some(&base), &limits()) {
            Verdict::Inconclusive(why) => assert!(why.contains("87 of the 500"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Errors are still judged at once in such a window.
        let bad = window(87, 20, Duration::from_millis(4));
        assert!(
            matches!(judge(&bad, Some(&base), &limits()), Verdict::Breach(b) if b.metric == "error_rate")
        );
    }

    /// Adds `requests` answers of `latency` (and `errors` of them 5xx) to
    /// cumulative counters.
    fn grow(w: &mut Window, requests: u64, errors: u64, latency: Duration) {
        w.requests += requests;
        w.errors += errors;
        w.latency.counts[bucket(latency)] += requests;
    }

    #[test]
    fn a_latency_breach_rolls_back_only_after_consecutive_windows() {
        let mut now = Window::default();
        let mut b = BakeWindows::new(now.clone(), 2);
        let t = limits();
        grow(&mut now, 600, 0, Duration::from_secs(2));
        assert_eq!(
            b.observe(&now, None, &t, false),
            WindowEnd::Open,
            "mid-window: wait"
        );
        assert!(
            matches!(
                b.observe(&now, None, &t, true),
                WindowEnd::Closed { number: 1, .. }
            ),
            "first strike"
        );
        grow(&mut now, 600, 0, Duration::from_millis(5));
        assert!(
            matches!(
                b.observe(&now, None, &t, true),
                WindowEnd::Closed {
                    verdict: Verdict::Pass,
                    ..
                }
            ),
            "a pass resets"
        );
        grow(&mut now, 600, 0, Duration::from_secs(2));
        assert!(matches!(
            b.observe(&now, None, &t, true),
            WindowEnd::Closed { .. }
        ));
        grow(&mut now, 600, 0, Duration::from_secs(2));
        match b.observe(&now, None, &t, true) {
            WindowEnd::Breach(x) => {
                assert!(x.summary.contains("2 windows in a row"), "{}", x.summary)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_breach_at_once_and_small_windows_grow_until_judged() {
        let mut now = Window::default();
        let mut b = BakeWindows::new(now.clone(), 3);
        let t = limits();
        grow(&mut now, 100, 0, Duration::from_millis(5));
        // Too few for a p99: reported as inconclusive, and the window goes on.
        assert!(matches!(
            b.observe(&now, None, &t, true),
            WindowEnd::Closed {
                verdict: Verdict::Inconclusive(_),
                number: 1,
                ..
            }
        ));
        assert!(b.caveat().contains("latency inconclusive"));
        grow(&mut now, 450, 0, Duration::from_millis(5));
        match b.observe(&now, None, &t, true) {
            WindowEnd::Closed {
                number: 1,
                window,
                verdict: Verdict::Pass,
                ..
            } => assert_eq!(window.requests, 550),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.caveat(), "");
        grow(&mut now, 30, 20, Duration::from_millis(5));
        assert!(
            matches!(b.observe(&now, None, &t, false), WindowEnd::Breach(x) if x.metric == "error_rate")
        );
    }

    #[test]
    fn p99_absolute_and_relative() {
        let base = window(600, 0, Duration::from_millis(10));
        let slow = window(600, 0, Duration::from_millis(40));
        let Verdict::Breach(b) = judge(&slow, Some(&base), &limits()) else {
            panic!()
        };
        assert_eq!(b.metric, "p99");
        let very_slow = window(600, 0, Duration::from_secs(2));
        let Verdict::Breach(b) = judge(&very_slow, None, &limits()) else {
            panic!()
        };
        assert!(b.summary.contains("limit 1000.0 ms"), "{}", b.summary);
    }
}
