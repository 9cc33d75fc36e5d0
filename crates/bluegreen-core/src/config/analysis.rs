//! `[[deploy.analysis]]`: the user's own metrics, judged during the bake and
//! canary steps beside the router's counters. Each names a source (the
//! app's resources, a Prometheus query, a JSON document over HTTP) and
//! limits (absolute, or new against the baseline).

use super::checker::Checker;
use crate::analysis::{Limits, APP_METRICS};
use serde::Deserialize;
use std::time::Duration;

/// Placeholders of a Prometheus query and a web URL.
pub const ANALYSIS_VARS: &[&str] = &["side", "version", "window"];

/// One metric to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisMetric {
    /// Used in reports and in a rollback's reason.
    pub name: String,
    pub source: AnalysisSource,
    pub limits: Limits,
    /// Breaches in a row (one per window) before it counts.
    pub consecutive: u32,
}

/// Where a metric's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum AnalysisSource {
    /// The supervisor's reading of the side's processes.
    App { metric: String },
    /// An instant query (`/api/v1/query`) against a Prometheus server.
    Prometheus {
        /// `http://host:port` (a path prefix allowed).
        address: String,
        query: String,
        /// Environment variable holding a bearer token, read when queried.
        token_env: Option<String>,
        timeout: Duration,
    },
    /// An HTTP GET returning JSON; the value at a JSON pointer.
    Web {
        url: String,
        pointer: String,
        token_env: Option<String>,
        timeout: Duration,
    },
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAnalysis {
    name: Option<String>,
    source: Option<String>,
    metric: Option<String>,
    address: Option<String>,
    query: Option<String>,
    url: Option<String>,
    pointer: Option<String>,
    bearer_token_env: Option<String>,
    timeout: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
    max_ratio: Option<f64>,
    consecutive: Option<i64>,
}

/// Validates every `[[deploy.analysis]]` entry; problems are reported with
/// the entry's index (`deploy.analysis[1].query`).
pub(super) fn validate(raw: &[RawAnalysis], c: &mut Checker) -> Vec<AnalysisMetric> {
    let mut out: Vec<AnalysisMetric> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = |k: &str| format!("deploy.analysis[{i}].{k}");
        let Some(name) = a.name.clone().filter(|n| !n.trim().is_empty()) else {
            c.issue(
                key("name"),
                "missing: every metric needs a name for its reports",
            );
            continue;
        };
        if out.iter().any(|m| m.name == name) {
            c.issue(key("name"), format!("{name:?} is used twice"));
            continue;
        }
        let timeout = c.duration(
            &key("timeout"),
            a.timeout.as_deref(),
            Duration::from_secs(5),
        );
        let limits = Limits {
            max: a.max,
            min: a.min,
            max_ratio: a
                .max_ratio
                .and_then(|r| c.ratio(&key("max_ratio"), Some(r))),
        };
        for (k, v) in [("max", a.max), ("min", a.min)] {
            if v.is_some_and(|v| !v.is_finite()) {
                c.issue(key(k), "must be a finite number");
            }
        }
        let source = match a.source.as_deref() {
            Some("app") => match a.metric.as_deref() {
                Some(m) if APP_METRICS.contains(&m) => AnalysisSource::App { metric: m.into() },
                Some(m) => {
                    c.issue(
                        key("metric"),
                        format!("{m:?}: one of {}", APP_METRICS.join(", ")),
                    );
                    continue;
                }
                None => {
                    c.issue(
                        key("metric"),
                        format!(
                            "missing for source \"app\": one of {}",
                            APP_METRICS.join(", ")
                        ),
                    );
                    continue;
                }
            },
            Some("prometheus") => {
                let address = a.address.clone().unwrap_or_default();
                if !address.starts_with("http://") {
                    c.issue(
                        key("address"),
                        format!("{address:?}: the Prometheus server as http://host:port"),
                    );
                    continue;
                }
                let query = a.query.clone().unwrap_or_default();
                if query.trim().is_empty() {
                    c.issue(
                        key("query"),
                        "missing: a PromQL query ({side}, {version} and {window} are filled in)",
                    );
                    continue;
                }
                if !placeholders_ok(&query, &key("query"), c) {
                    continue;
                }
                AnalysisSource::Prometheus {
                    address: address.trim_end_matches('/').to_string(),
                    query,
                    token_env: a.bearer_token_env.clone(),
                    timeout,
                }
            }
            Some("web") => {
                let url = a.url.clone().unwrap_or_default();
                if !url.starts_with("http://") {
                    c.issue(
                        key("url"),
                        format!("{url:?}: an http:// URL returning JSON"),
                    );
                    continue;
                }
                if !placeholders_ok(&url, &key("url"), c) {
                    continue;
                }
                let pointer = a.pointer.clone().unwrap_or_default();
                if !pointer.starts_with('/') {
                    c.issue(
                        key("pointer"),
                        format!(
                            "{pointer:?}: a JSON pointer to the value, like \"/data/error_rate\""
                        ),
                    );
                    continue;
                }
                AnalysisSource::Web {
                    url,
                    pointer,
                    token_env: a.bearer_token_env.clone(),
                    timeout,
                }
            }
            Some(other) => {
                c.issue(
                    key("source"),
                    format!("{other:?}: one of \"app\", \"prometheus\", \"web\""),
                );
                continue;
            }
            None => {
                c.issue(key("source"), "missing: \"app\", \"prometheus\" or \"web\"");
                continue;
            }
        };
        if limits.is_empty() && !matches!(source, AnalysisSource::App { .. }) {
            c.issue(
                key("max"),
                "no limit: give max, min or max_ratio (new against the baseline)",
            );
            continue;
        }
        let consecutive = c.int(&key("consecutive"), a.consecutive, 1, 1, 100) as u32;
        out.push(AnalysisMetric {
            name,
            source,
            limits,
            consecutive,
        });
    }
    out
}

/// Only `{side}`, `{version}` and `{window}` may appear in braces (PromQL's
/// own `{label="x"}` matchers have an `=`, `~` or `!` and are left alone).
fn placeholders_ok(text: &str, key: &str, c: &mut Checker) -> bool {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let inner = &after[..close];
        let is_name = !inner.is_empty()
            && inner
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if is_name && !ANALYSIS_VARS.contains(&inner) {
            c.issue(
                key,
                format!(
                    "unknown placeholder {{{inner}}}: only {{side}}, {{version}} and {{window}}"
                ),
            );
            return false;
        }
        rest = &after[close + 1..];
    }
    true
}

/// Fills `{side}`, `{version}` and `{window}` (a Prometheus duration like
/// `30s`).
pub fn fill_vars(text: &str, side: &str, version: &str, window: Duration) -> String {
    text.replace("{side}", side)
        .replace("{version}", version)
        .replace("{window}", &format!("{}s", window.as_secs().max(1)))
}
