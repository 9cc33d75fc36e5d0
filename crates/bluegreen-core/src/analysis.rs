//! Judgment beyond the router's own counters: the app's resources (CPU,
//! memory, file descriptors, restarts) and the user's own metrics
//! (`[[deploy.analysis]]`), each read for the new side and a baseline and
//! classified High/Low/Pass/NoData, then shown as one table. Pure: the
//! readings come from the supervisor and from HTTP sources elsewhere.

use crate::rank::{self, Class, ShiftRule};
use serde::{Deserialize, Serialize};

/// One look at a side's processes, cumulative where it can be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AppSample {
    pub at_ms: u64,
    /// CPU seconds used by the side's processes since the series began
    /// (user + system, summed over every process of each group).
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    /// Restarts of the side's processes so far.
    pub restarts: u64,
    /// Requests the side answered so far (the router's counter).
    pub requests: u64,
}

/// What a metric's reading came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricVerdict {
    Pass,
    High,
    Low,
    /// Nothing to judge (a source down, too few samples): never a pass.
    NoData,
}

impl MetricVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricVerdict::Pass => "pass",
            MetricVerdict::High => "HIGH",
            MetricVerdict::Low => "LOW",
            MetricVerdict::NoData => "no data",
        }
    }
}

/// One row of the report: metric | new | baseline | limit | verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub name: String,
    pub new: Option<f64>,
    pub baseline: Option<f64>,
    pub unit: String,
    /// The limit in words (`≤ 1.5x baseline`, `≤ 30 MiB/min`).
    pub limit: String,
    pub verdict: MetricVerdict,
    /// Why (the test's numbers, the source's error).
    pub detail: String,
}

impl Reading {
    /// One sentence for a rollback: "cpu_per_request 4.1 ms against 1.0 ms
    /// (≤ 1.5x baseline): Mann-Whitney p = 1e-5".
    pub fn sentence(&self) -> String {
        let num = |v: Option<f64>| v.map(|v| fmt(v, &self.unit)).unwrap_or_else(|| "-".into());
        let against = match self.baseline {
            Some(_) => format!(" against {}", num(self.baseline)),
            None => String::new(),
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        format!(
            "{} {}{against} ({}){detail}",
            self.name,
            num(self.new),
            self.limit
        )
    }
}

/// A number with its unit, rounded for people.
pub fn fmt(v: f64, unit: &str) -> String {
    let n = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

/// The rows as a fixed-width table, for the deploy log and the CLI.
pub fn table(rows: &[Reading]) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let num = |v: Option<f64>| v.map(|v| fmt(v, &r.unit)).unwrap_or_else(|| "-".into());
            [
                r.name.clone(),
                num(r.new),
                num(r.baseline),
                r.limit.clone(),
                r.verdict.as_str().to_string(),
            ]
        })
        .collect();
    let head = ["metric", "new", "baseline", "limit", "verdict"];
    let mut width = head.map(|h| h.chars().count());
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        row.iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(&head.map(String::from))];
    out.extend(cells.iter().map(|r| line(r)));
    out.join("\n")
}

/// Limits on one metric; any subset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub max: Option<f64>,
    pub min: Option<f64>,
    /// new / baseline.
    pub max_ratio: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.max.is_none() && self.min.is_none() && self.max_ratio.is_none()
    }

    /// The limits in words.
    pub fn describe(&self, unit: &str) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.max_ratio {
            parts.push(format!("≤ {r}x baseline"));
        }
        if let Some(m) = self.max {
            parts.push(format!("≤ {}", fmt(m, unit)));
        }
        if let Some(m) = self.min {
            parts.push(format!("≥ {}", fmt(m, unit)));
        }
        if parts.is_empty() {
            "shown only".into()
        } else {
            parts.join(", ")
        }
    }

    /// A single value (and its baseline) against the limits. A ratio limit
    /// with no baseline to compare is no data, never a pass.
    pub fn judge(&self, new: Option<f64>, baseline: Option<f64>) -> (MetricVerdict, String) {
        let Some(v) = new else {
            return (MetricVerdict::NoData, "no value".into());
        };
        if let Some(m) = self.max {
            if v > m {
                return (MetricVerdict::High, String::new());
            }
        }
        if let Some(m) = self.min {
            if v < m {
                return (MetricVerdict::Low, String::new());
            }
        }
        if let Some(r) = self.max_ratio {
            match baseline {
                Some(b) if b > 0.0 && v > b * r => {
                    return (MetricVerdict::High, format!("{:.2}x baseline", v / b));
                }
                // Within the ratio; or zero before: any amount now is an
                // infinite ratio, only the absolute limits can judge it.
                Some(_) => {}
                None if self.max.is_none() && self.min.is_none() => {
                    return (MetricVerdict::NoData, "no baseline to compare with".into())
                }
                None => {}
            }
        }
        (MetricVerdict::Pass, String::new())
    }
}

/// The app metrics the supervisor can read.
pub const APP_METRICS: [&str; 6] = [
    "cpu_per_request",
    "cpu",
    "rss",
    "rss_growth",
    "fds",
    "restarts",
];

/// Unit each app metric is shown in.
pub fn app_unit(metric: &str) -> &'static str {
    match metric {
        "cpu_per_request" => "ms",
        "cpu" => "cores",
        "rss" => "MiB",
        "rss_growth" => "MiB/min",
        _ => "",
    }
}

/// The limits used when `[[deploy.analysis]]` says nothing of a metric:
/// CPU per request 1.5x the old side's (by a rank test), memory growing
/// 30 MiB a minute and still growing, any restart. The others are shown.
pub fn default_limits(metric: &str) -> Limits {
    match metric {
        "cpu_per_request" => Limits {
            max_ratio: Some(1.5),
            ..Limits::default()
        },
        "rss_growth" => Limits {
            max: Some(30.0),
            ..Limits::default()
        },
        "restarts" => Limits {
            max: Some(0.0),
            ..Limits::default()
        },
        _ => Limits::default(),
    }
}

/// Requests an interval needs before its CPU per request counts.
const CPU_SAMPLE_REQUESTS: u64 = 10;

/// CPU milliseconds per request over successive stretches of the series,
/// each holding at least [`CPU_SAMPLE_REQUESTS`] requests.
pub fn cpu_per_request_samples(series: &[AppSample]) -> Vec<f64> {
    let mut out = Vec::new();
    let Some(mut from) = series.first() else {
        return out;
    };
    for s in &series[1..] {
        let requests = s.requests.saturating_sub(from.requests);
        if requests >= CPU_SAMPLE_REQUESTS {
            out.push((s.cpu_s - from.cpu_s).max(0.0) * 1000.0 / requests as f64);
            from = s;
        }
    }
    out
}

/// Least-squares slope of resident memory, in MiB per minute.
pub fn rss_slope(series: &[AppSample]) -> Option<f64> {
    if series.len() < 5 {
        return None;
    }
    let t0 = series[0].at_ms as f64;
    let xs: Vec<f64> = series
        .iter()
        .map(|s| (s.at_ms as f64 - t0) / 60_000.0)
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .map(|s| s.rss_bytes as f64 / 1_048_576.0)
        .collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    Some(sxy / sxx)
}

fn last_minus_first(series: &[AppSample], f: impl Fn(&AppSample) -> f64) -> Option<f64> {
    Some(f(series.last()?) - f(series.first()?))
}

fn cores(series: &[AppSample]) -> Option<f64> {
    let (a, b) = (series.first()?, series.last()?);
    let secs = b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0;
    (secs >= 1.0).then(|| (b.cpu_s - a.cpu_s).max(0.0) / secs)
}

/// One app metric, the new side's series (the bake so far) against the
/// baseline's (the old side while it was live).
pub fn judge_app(metric: &str, new: &[AppSample], base: &[AppSample], limits: &Limits) -> Reading {
    let unit = app_unit(metric).to_string();
    let mut r = Reading {
        name: metric.to_string(),
        new: None,
        baseline: None,
        unit: unit.clone(),
        limit: limits.describe(&unit),
        verdict: MetricVerdict::NoData,
        detail: String::new(),
    };
    let mib = |s: &AppSample| s.rss_bytes as f64 / 1_048_576.0;
    match metric {
        "cpu_per_request" => {
            let (a, b) = (cpu_per_request_samples(new), cpu_per_request_samples(base));
            let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            r.new = mean(&a);
            r.baseline = mean(&b);
            // The ratio limit by a rank test over the stretches: one busy
            // second (a GC, a cron) must not roll a release back.
            let (mut verdict, detail) = limits.judge(r.new, r.baseline);
            if let (Some(ratio), MetricVerdict::High | MetricVerdict::Pass) =
                (limits.max_ratio, verdict)
            {
                let rule = ShiftRule {
                    alpha: 0.001,
                    min_ratio: ratio,
                    min_shift: 0.0,
                    min_samples: 5,
                };
                let (class, test) =
                    rank::classify(&rank::sample_values(&a), &rank::sample_values(&b), &rule);
                let over_max = limits.max.is_some_and(|m| r.new.unwrap_or(0.0) > m);
                verdict = match class {
                    Class::High => MetricVerdict::High,
                    Class::NoData(why) => {
                        r.detail = why;
                        if over_max {
                            MetricVerdict::High
                        } else {
                            MetricVerdict::NoData
                        }
                    }
                    _ if over_max => MetricVerdict::High,
                    _ => MetricVerdict::Pass,
                };
                if let Some(t) = test {
                    r.detail = format!(
                        "{:.2}x (Mann-Whitney p = {:.1e}, {} and {} stretches of {CPU_SAMPLE_REQUESTS}+ requests)",
                        t.ratio, t.p_higher, t.n_new, t.n_base
                    );
                }
            } else {
                r.detail = detail;
            }
            r.verdict = verdict;
            return r;
        }
        "cpu" => {
            r.new = cores(new);
            r.baseline = cores(base);
        }
        "rss" => {
            r.new = new.last().map(mib);
            r.baseline = base.last().map(mib);
        }
        "rss_growth" => {
            r.new = rss_slope(new);
            r.baseline = rss_slope(base);
            // Growth that has stopped (a cache filled, a warm-up) is not
            // a leak: the second half must still grow at half the limit.
            if let (Some(max), Some(v)) = (limits.max, r.new) {
                if v > max {
                    let half = rss_slope(&new[new.len() / 2..]).unwrap_or(0.0);
                    if half < max / 2.0 {
                        r.verdict = MetricVerdict::Pass;
                        r.detail = format!("grew early, {half:.1} MiB/min in the second half");
                        return r;
                    }
                }
            }
        }
        "fds" => {
            r.new = new.last().map(|s| s.fds as f64);
            r.baseline = base.last().map(|s| s.fds as f64);
        }
        "restarts" => {
            r.new = last_minus_first(new, |s| s.restarts as f64);
            r.baseline = last_minus_first(base, |s| s.restarts as f64);
        }
        other => {
            r.detail = format!("unknown app metric {other:?}");
            return r;
        }
    }
    let (verdict, detail) = if limits.is_empty() {
        (
            if r.new.is_some() {
                MetricVerdict::Pass
            } else {
                MetricVerdict::NoData
            },
            String::new(),
        )
    } else {
        limits.judge(r.new, r.baseline)
    };
    r.verdict = verdict;
    if r.detail.is_empty() {
        r.detail = detail;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A side answering `rps` requests a second for `secs` seconds, each
    /// costing `cpu_ms`, its memory growing `mib_s` a second.
    fn series(secs: u64, rps: u64, cpu_ms: f64, mib_s: f64, jitter: bool) -> Vec<AppSample> {
        let mut cpu = 0.0;
        (0..=secs)
            .map(|t| {
                // Every third second costs a tenth more (a GC, a cron).
                let wobble = if jitter && t % 3 == 0 { 1.1 } else { 1.0 };
                if t > 0 {
                    cpu += rps as f64 * cpu_ms * wobble / 1000.0;
                }
                AppSample {
                    at_ms: t * 1000,
                    cpu_s: cpu,
                    rss_bytes: ((40.0 + mib_s * t as f64) * 1_048_576.0) as u64,
                    fds: 12,
                    restarts: 0,
                    requests: t * rps,
                }
            })
            .collect()
    }

    #[test]
    fn four_times_the_cpu_per_request_is_high_and_the_same_passes() {
        let base = series(20, 40, 3.0, 0.0, true);
        let burn = series(12, 40, 12.0, 0.0, true);
        let r = judge_app(
            "cpu_per_request",
            &burn,
            &base,
            &default_limits("cpu_per_request"),
        );
        assert_eq!(r.verdict, MetricVerdict::High, "{r:?}");
        assert!(
            r.sentence().starts_with("cpu_per_request 12.") && r.sentence().contains("against 3."),
            "{}",
            r.sentence()
        );
        let same = series(12, 40, 3.0, 0.0, true);
        let r = judge_app(
            "cpu_per_request",
            &same,
            &base,
            &default_limits("cpu_per_request"),
        );
        assert_eq!(r.verdict, MetricVerdict::Pass, "{r:?}");
    }

    #[test]
    fn a_leak_is_high_a_warm_up_is_not() {
        let base = series(20, 40, 3.0, 0.0, false);
        let leak = series(15, 40, 3.0, 1.0, false);
        let r = judge_app("rss_growth", &leak, &base, &default_limits("rss_growth"));
        assert_eq!(r.verdict, MetricVerdict::High, "{r:?}");
        assert!((r.new.unwrap() - 60.0).abs() < 1.0);
        // 30 MiB in the first 3 s, then flat.
        let mut warm = series(15, 40, 3.0, 0.0, false);
        for (t, s) in warm.iter_mut().enumerate() {
            s.rss_bytes += (10.0 * t.min(3) as f64 * 1_048_576.0) as u64;
        }
        let r = judge_app("rss_growth", &warm, &base, &default_limits("rss_growth"));
        assert_eq!(r.verdict, MetricVerdict::Pass, "{r:?}");
    }

    #[test]
    fn restarts_and_missing_data() {
        let base = series(20, 40, 3.0, 0.0, false);
        let mut new = series(10, 40, 3.0, 0.0, false);
        new.last_mut().unwrap().restarts = 1;
        let r = judge_app("restarts", &new, &base, &default_limits("restarts"));
        assert_eq!(r.verdict, MetricVerdict::High);
        let r = judge_app(
            "cpu_per_request",
            &[],
            &base,
            &default_limits("cpu_per_request"),
        );
        assert_eq!(r.verdict, MetricVerdict::NoData);
        let (v, why) = Limits {
            max_ratio: Some(2.0),
            ..Limits::default()
        }
        .judge(Some(3.0), None);
        assert_eq!(
            v,
            MetricVerdict::NoData,
            "a ratio without a baseline is never a pass"
        );
        assert!(why.contains("baseline"));
    }

    #[test]
    fn the_table_lines_up() {
        let rows = vec![
            Reading {
                name: "cpu_per_request".into(),
                new: Some(12.0),
                baseline: Some(3.0),
                unit: "ms".into(),
                limit: "≤ 1.5x baseline".into(),
                verdict: MetricVerdict::High,
                detail: String::new(),
            },
            Reading {
                name: "rss".into(),
                new: None,
                baseline: Some(40.0),
                unit: "MiB".into(),
                limit: "shown only".into(),
                verdict: MetricVerdict::NoData,
                detail: String::new(),
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("metric"));
        assert!(
            lines[1].contains("12.00 ms") && lines[1].ends_with("HIGH"),
            "{t}"
        );
        let col = lines[0].find("baseline").unwrap();
        assert_eq!(lines[2].chars().nth(col), Some('4'), "{t}");
    }
}
