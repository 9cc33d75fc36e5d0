//! The bake's and canary's judgment beyond the router's counters: the
//! supervised app's resources and the user's `[[deploy.analysis]]` metrics,
//! each read for the new side and a baseline at every window, a breach
//! counted only when it holds `consecutive` windows in a row. A source that
//! fails or has no data is recorded as such, with its reason: a configured
//! metric that ends the bake without data makes the bake inconclusive,
//! never a pass.

use super::*;
use bluegreen_core::analysis::{
    self as judge, default_limits, AppSample, MetricVerdict, Reading, APP_METRICS,
};
use bluegreen_core::config::analysis::{fill_vars, AnalysisMetric, AnalysisSource};
use http_body_util::{BodyExt, Empty, Limited};
use std::future::Future;
use std::pin::Pin;

/// What is judged against what: the new side from `new_from_ms` on,
/// against the baseline side over `[base_from_ms, base_to_ms]` (`None`:
/// up to now, the same minutes, as in a canary).
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub new: (Side, String),
    pub base: Option<(Side, String)>,
    pub new_from_ms: u64,
    pub base_from_ms: u64,
    pub base_to_ms: Option<u64>,
}

struct Tracked {
    metric: AnalysisMetric,
    /// One of the app metrics judged without being configured: shown, and
    /// its breaches count, but its missing data never holds a deploy.
    builtin: bool,
    strikes: u32,
    last: Option<Reading>,
    judged: bool,
}

/// The metrics of one bake or canary share and what they said so far.
pub(super) struct Judge {
    tracked: Vec<Tracked>,
    scope: Scope,
}

/// External readings on their way (a slow Prometheus never delays the
/// 100 ms error-rate checks).
pub(super) type Fetch = Pin<Box<dyn Future<Output = Vec<(usize, Reading)>> + Send>>;

impl Judge {
    pub(super) fn new(p: &Pipeline, scope: Scope) -> Judge {
        let config = p.config();
        let consecutive = config.bake.consecutive;
        let mut tracked: Vec<Tracked> = Vec::new();
        let configured_app = |m: &str| {
            config
                .analysis
                .iter()
                .any(|a| matches!(&a.source, AnalysisSource::App { metric } if metric == m))
        };
        if p.resources().is_some() {
            for m in APP_METRICS {
                if configured_app(m) {
                    continue;
                }
                tracked.push(Tracked {
                    metric: AnalysisMetric {
                        name: m.to_string(),
                        source: AnalysisSource::App { metric: m.into() },
                        limits: default_limits(m),
                        // A restart is a fact, CPU and memory drift.
                        consecutive: if m == "restarts" { 1 } else { consecutive },
                    },
                    builtin: true,
                    strikes: 0,
                    last: None,
                    judged: false,
                });
            }
        }
        for a in &config.analysis {
            tracked.push(Tracked {
                metric: a.clone(),
                builtin: false,
                strikes: 0,
                last: None,
                judged: false,
            });
        }
        Judge { tracked, scope }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// Reads the app metrics now (from memory) and starts reading the
    /// external ones.
    pub(super) fn look(&self, p: &Pipeline) -> (Vec<(usize, Reading)>, Option<Fetch>) {
        let now = now_ms();
        let series = |side: Side, version: &str, from: u64, to: u64| -> Vec<AppSample> {
            p.resources()
                .map(|r| r.series(side, version, from, to))
                .unwrap_or_default()
        };
        let s = &self.scope;
        let new = series(s.new.0, &s.new.1, s.new_from_ms, now);
        let base = s
            .base
            .as_ref()
            .map(|(side, v)| series(*side, v, s.base_from_ms, s.base_to_ms.unwrap_or(now)))
            .unwrap_or_default();
        let mut app = Vec::new();
        let mut external = Vec::new();
        for (i, t) in self.tracked.iter().enumerate() {
            match &t.metric.source {
                AnalysisSource::App { metric } => {
                    let mut r = judge::judge_app(metric, &new, &base, &t.metric.limits);
                    r.name = t.metric.name.clone();
                    if p.resources().is_none() {
                        r.detail =
                            "the app is not run by the supervisor: no process to read".into();
                    }
                    app.push((i, r));
                }
                _ => external.push((i, t.metric.clone())),
            }
        }
        let fetch = (!external.is_empty()).then(|| {
            let scope = self.scope.clone();
            Box::pin(async move {
                let mut out = Vec::new();
                for (i, m) in external {
                    out.push((i, read_external(&m, &scope).await));
                }
                out
            }) as Fetch
        });
        (app, fetch)
    }

    /// Takes readings in; returns the one that breached for its
    /// `consecutive` windows in a row, if any.
    pub(super) fn record(&mut self, readings: Vec<(usize, Reading)>) -> Option<Reading> {
        let mut breach = None;
        for (i, r) in readings {
            let Some(t) = self.tracked.get_mut(i) else {
                continue;
            };
            match r.verdict {
                MetricVerdict::High | MetricVerdict::Low => {
                    t.strikes += 1;
                    t.judged = true;
                }
                MetricVerdict::Pass => {
                    t.strikes = 0;
                    t.judged = true;
                }
                // No data says nothing either way: the count stands.
                MetricVerdict::NoData => {}
            }
            if t.strikes >= t.metric.consecutive && breach.is_none() {
                let mut r = r.clone();
                if t.metric.consecutive > 1 {
                    r.detail = format!(
                        "{}{}in {} windows in a row",
                        r.detail,
                        if r.detail.is_empty() { "" } else { "; " },
                        t.strikes
                    );
                }
                breach = Some(r);
            }
            t.last = Some(r);
        }
        breach
    }

    /// The number `name`'s value was held to (max, or the baseline times
    /// max_ratio, or min), 0 when there is none.
    pub(super) fn limit_of(&self, name: &str, baseline: Option<f64>) -> f64 {
        let Some(t) = self.tracked.iter().find(|t| t.metric.name == name) else {
            return 0.0;
        };
        let l = &t.metric.limits;
        l.max
            .or(l.max_ratio.zip(baseline).map(|(r, b)| r * b))
            .or(l.min)
            .unwrap_or(0.0)
    }

    /// The latest reading of every metric.
    pub(super) fn rows(&self) -> Vec<Reading> {
        self.tracked.iter().filter_map(|t| t.last.clone()).collect()
    }

    /// Configured metrics that cannot vouch for the release: never judged,
    /// or without data at their last reading (a source gone mid-bake).
    pub(super) fn unjudged(&self) -> Vec<String> {
        self.tracked
            .iter()
            .filter(|t| !t.builtin)
            .filter_map(|t| match &t.last {
                Some(r) if r.verdict == MetricVerdict::NoData => Some(format!(
                    "{}: no data ({})",
                    t.metric.name,
                    if r.detail.is_empty() {
                        "no value"
                    } else {
                        &r.detail
                    }
                )),
                None => Some(format!("{}: never read", t.metric.name)),
                Some(_) if !t.judged => Some(format!("{}: never judged", t.metric.name)),
                Some(_) => None,
            })
            .collect()
    }
}

/// Reads a Prometheus or web metric for the new side (and the baseline,
/// when a ratio limit needs one).
async fn read_external(m: &AnalysisMetric, s: &Scope) -> Reading {
    let now = now_ms();
    let new_window = Duration::from_millis(now.saturating_sub(s.new_from_ms).max(1000));
    let base_to = s.base_to_ms.unwrap_or(now);
    let base_window = Duration::from_millis(base_to.saturating_sub(s.base_from_ms).max(1000));
    let (unit, new, base) = match &m.source {
        AnalysisSource::Prometheus {
            address,
            query,
            token_env,
            timeout,
        } => {
            let ask = |side: &str, version: &str, window: Duration, at_ms: u64| {
                let q = fill_vars(query, side, version, window);
                prometheus(address, q, at_ms, token_env.clone(), *timeout)
            };
            let new = ask(s.new.0.as_str(), &s.new.1, new_window, now).await;
            let base = match (&s.base, m.limits.max_ratio) {
                (Some((side, v)), Some(_)) => {
                    Some(ask(side.as_str(), v, base_window, base_to).await)
                }
                _ => None,
            };
            ("", new, base)
        }
        AnalysisSource::Web {
            url,
            pointer,
            token_env,
            timeout,
        } => {
            let ask = |side: &str, version: &str, window: Duration| {
                let u = fill_vars(url, side, version, window);
                web(u, pointer.clone(), token_env.clone(), *timeout)
            };
            let new = ask(s.new.0.as_str(), &s.new.1, new_window).await;
            let base = match (&s.base, m.limits.max_ratio) {
                (Some((side, v)), Some(_)) => Some(ask(side.as_str(), v, base_window).await),
                _ => None,
            };
            ("", new, base)
        }
        AnalysisSource::App { .. } => unreachable!("app metrics are read from memory"),
    };
    let mut r = Reading {
        name: m.name.clone(),
        new: new.as_ref().ok().copied(),
        baseline: base.as_ref().and_then(|b| b.as_ref().ok().copied()),
        unit: unit.into(),
        limit: m.limits.describe(unit),
        verdict: MetricVerdict::NoData,
        detail: String::new(),
    };
    match (&new, &base) {
        (Err(e), _) => r.detail = e.to_string(),
        (Ok(_), Some(Err(e))) if m.limits.max.is_none() && m.limits.min.is_none() => {
            r.detail = format!("baseline: {e}")
        }
        _ => {
            let (v, why) = m.limits.judge(r.new, r.baseline);
            r.verdict = v;
            r.detail = why;
        }
    }
    r
}

/// Why a metric source gave no number. The reading says so, and a metric
/// that ends a bake without data makes it inconclusive, never a pass.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum SourceError {
    /// The source cannot be asked: a bad URL, a token not set.
    #[error("{0}")]
    Setup(String),
    /// No answer: not reachable, or not within the timeout.
    #[error("{0}")]
    Unreachable(String),
    /// An answer that is not one: an HTTP error, not JSON, a failed query.
    #[error("{0}")]
    Answer(String),
    /// An answer without one number in it: no series yet, several, NaN.
    #[error("{0}")]
    NoNumber(String),
}

impl SourceError {
    /// The same kind, the message put in context.
    fn context(self, f: impl FnOnce(String) -> String) -> SourceError {
        match self {
            SourceError::Setup(m) => SourceError::Setup(f(m)),
            SourceError::Unreachable(m) => SourceError::Unreachable(f(m)),
            SourceError::Answer(m) => SourceError::Answer(f(m)),
            SourceError::NoNumber(m) => SourceError::NoNumber(f(m)),
        }
    }
}

/// Largest answer read from a metric source.
const MAX_ANSWER: usize = 1 << 20;

/// GET `url` and parse JSON, within `timeout`.
async fn get_json(
    url: &str,
    token_env: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value, SourceError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| SourceError::Setup(format!("{url}: {e}")))?;
    let mut req = http::Request::get(uri);
    if let Some(var) = token_env {
        let token = std::env::var(var)
            .map_err(|_| SourceError::Setup(format!("${var} (the bearer token) is not set")))?;
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| SourceError::Setup(e.to_string()))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let work = async {
        let res = client.request(req).await.map_err(|e| {
            SourceError::Unreachable(format!(
                "{url}: {}",
                bluegreen_core::error_chain(&e as &(dyn std::error::Error + 'static))
            ))
        })?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| SourceError::Unreachable(format!("{url}: reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(SourceError::Answer(format!(
                "{url}: HTTP {status}: {}",
                text.trim()
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| SourceError::Answer(format!("{url}: not JSON: {e}")))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        SourceError::Unreachable(format!(
            "{url}: no answer within {}",
            humantime::format_duration(timeout)
        ))
    })?
}

/// An instant query; the value of the one series it returns (or a scalar).
async fn prometheus(
    address: &str,
    query: String,
    at_ms: u64,
    token_env: Option<String>,
    timeout: Duration,
) -> Result<f64, SourceError> {
    let qs = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", &query)
        .append_pair("time", &format!("{:.3}", at_ms as f64 / 1000.0))
        .finish();
    let url = format!("{address}/api/v1/query?{qs}");
    let v = get_json(&url, token_env.as_deref(), timeout)
        .await
        .map_err(|e| e.context(|m| format!("prometheus: {m}")))?;
    prometheus_value(&v).map_err(|e| e.context(|m| format!("prometheus query {query:?}: {m}")))
}

/// The number in an instant query's answer: a scalar, or a vector of
/// exactly one series (several are ambiguous: the query must aggregate).
fn prometheus_value(v: &serde_json::Value) -> Result<f64, SourceError> {
    use SourceError::{Answer, NoNumber};
    if v["status"] != "success" {
        return Err(Answer(
            v["error"]
                .as_str()
                .unwrap_or("status is not success")
                .to_string(),
        ));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => {
                    return Err(NoNumber(
                        "no series (no data yet, or a label that matches nothing)".into(),
                    ))
                }
                [one] => &one["value"],
                many => {
                    return Err(NoNumber(format!(
                        "{} series: aggregate them (sum, avg, max) to one",
                        many.len()
                    )))
                }
            }
        }
        other => {
            return Err(Answer(format!(
                "result type {other:?}: use an instant vector or scalar"
            )))
        }
    };
    let text = sample[1]
        .as_str()
        .ok_or_else(|| NoNumber("no value in the sample".into()))?;
    let x: f64 = text
        .parse()
        .map_err(|_| NoNumber(format!("value {text:?} is not a number")))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(NoNumber(format!(
            "value is {text} (a division by zero: no traffic?)"
        )))
    }
}

/// A number at a JSON pointer of a document over HTTP.
async fn web(
    url: String,
    pointer: String,
    token_env: Option<String>,
    timeout: Duration,
) -> Result<f64, SourceError> {
    use SourceError::NoNumber;
    let v = get_json(&url, token_env.as_deref(), timeout).await?;
    let at = v
        .pointer(&pointer)
        .ok_or_else(|| NoNumber(format!("{url}: nothing at {pointer}")))?;
    match at {
        serde_json::Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| NoNumber(format!("{url}: {pointer} is not a number"))),
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| NoNumber(format!("{url}: {pointer} is {s:?}, not a number"))),
        serde_json::Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        other => Err(NoNumber(format!(
            "{url}: {pointer} is {other}, not a number"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_are_read_or_refused_with_a_reason() {
        let one = serde_json::json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1.0, "0.25"]}]}});
        assert_eq!(prometheus_value(&one), Ok(0.25));
        let scalar = serde_json::json!({"status": "success", "data": {"resultType": "scalar",
            "result": [1.0, "3"]}});
        assert_eq!(prometheus_value(&scalar), Ok(3.0));
        let none = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(
            matches!(prometheus_value(&none), Err(SourceError::NoNumber(m)) if m.contains("no series"))
        );
        let nan = serde_json::json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"value": [1.0, "NaN"]}]}});
        assert!(
            matches!(prometheus_value(&nan), Err(SourceError::NoNumber(m)) if m.contains("NaN"))
        );
        let two = serde_json::json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"value": [1.0, "1"]}, {"value": [1.0, "2"]}]}});
        assert!(
            matches!(prometheus_value(&two), Err(SourceError::NoNumber(m)) if m.contains("aggregate"))
        );
        let bad = serde_json::json!({"status": "error", "error": "parse error at char 3"});
        assert!(
            matches!(prometheus_value(&bad), Err(SourceError::Answer(m)) if m.contains("parse error"))
        );
    }
}
