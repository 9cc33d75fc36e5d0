//! The `[shadow]` table (how live traffic is mirrored to the idle side and
//! compared) and the pipeline's `[deploy.shadow]` gate and `[deploy.warm]`
//! replay.

use super::Checker;
use crate::shadow::Gate;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Methods mirrored unless the config says otherwise: writes duplicated into
/// a shared database are the classic shadowing disaster.
pub const SAFE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];

/// Validated `[shadow]` settings; defaults for `bluegreen shadow start` and
/// the pipeline's shadow step.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Share of live requests mirrored, 0–100.
    pub percent: f64,
    /// Upper-case methods mirrored.
    pub methods: Vec<String>,
    /// Sample by this header's value, so one user is wholly in or out.
    pub sticky_header: Option<String>,
    /// Sample by this cookie's value.
    pub sticky_cookie: Option<String>,
    /// Requests with a larger body are not mirrored.
    pub max_request_body: usize,
    /// Response bodies are compared up to this size; larger ones by status and headers only.
    pub max_response_body: usize,
    /// Lower-case header names never compared (beyond the built-in list).
    pub ignore_headers: Vec<String>,
    /// JSON pointers never compared (`*` for any array index).
    pub ignore_paths: Vec<String>,
    /// Mirrored requests in flight at most.
    pub concurrency: usize,
    /// Mirrored requests waiting at most; more are dropped and counted.
    pub queue: usize,
    /// Limit for one mirrored request.
    pub timeout: Duration,
    /// Share of mirrored requests also sent to a second live upstream to learn noise.
    pub noise_percent: f64,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            percent: 100.0,
            methods: SAFE_METHODS.iter().map(|m| m.to_string()).collect(),
            sticky_header: None,
            sticky_cookie: None,
            max_request_body: 64 * 1024,
            max_response_body: 1024 * 1024,
            ignore_headers: Vec::new(),
            ignore_paths: Vec::new(),
            concurrency: 32,
            queue: 256,
            timeout: Duration::from_secs(10),
            noise_percent: 10.0,
        }
    }
}

/// The pipeline step that shadows live traffic before the switch.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowStep {
    /// Shadow this long at most.
    pub duration: Duration,
    /// Stop earlier once this many pairs were compared.
    pub requests: Option<u64>,
    /// Overrides `[shadow] percent` for the step.
    pub percent: Option<f64>,
    pub gate: Gate,
}

/// The pipeline step that replays a record file to the idle side.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmStep {
    pub file: PathBuf,
    /// `1x`, `2x`, `max`.
    pub speed: String,
    pub concurrency: usize,
    pub loop_for: Option<Duration>,
    /// Recorded requests with other methods are not replayed (writes would
    /// reach a database the live side shares).
    pub methods: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawShadow {
    percent: Option<f64>,
    methods: Option<Vec<String>>,
    sticky_header: Option<String>,
    sticky_cookie: Option<String>,
    max_request_body: Option<i64>,
    max_response_body: Option<i64>,
    #[serde(default)]
    ignore_headers: Vec<String>,
    #[serde(default)]
    ignore_paths: Vec<String>,
    concurrency: Option<i64>,
    queue: Option<i64>,
    timeout: Option<String>,
    noise_percent: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawShadowStep {
    duration: Option<String>,
    requests: Option<i64>,
    percent: Option<f64>,
    min_requests: Option<i64>,
    max_diff_rate: Option<f64>,
    max_p99_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawWarm {
    file: Option<String>,
    speed: Option<String>,
    concurrency: Option<i64>,
    loop_for: Option<String>,
    methods: Option<Vec<String>>,
}

impl Checker {
    pub(super) fn percent(&mut self, key: &str, raw: Option<f64>, default: f64) -> f64 {
        match raw {
            None => default,
            Some(v) if (0.0..=100.0).contains(&v) => v,
            Some(v) => {
                self.issue(
                    key,
                    format!("{v} is out of range: expected a percentage from 0 to 100"),
                );
                default
            }
        }
    }
}

/// A header name as HTTP allows it (RFC 9110 token), lower-cased.
fn header_name(c: &mut Checker, key: &str, raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Some(raw.to_ascii_lowercase())
    } else {
        c.issue(key, format!("{raw:?} is not a valid header name"));
        None
    }
}

pub(super) fn validate(raw: Option<&RawShadow>, c: &mut Checker) -> ShadowConfig {
    let d = ShadowConfig::default();
    let Some(raw) = raw else { return d };
    let methods = match &raw.methods {
        None => d.methods,
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                let up = m.to_ascii_uppercase();
                if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                    c.issue("shadow.methods", format!("{m:?} is not an HTTP method"));
                } else if ["CONNECT", "TRACE"].contains(&up.as_str()) {
                    c.issue("shadow.methods", format!("{up} cannot be mirrored"));
                } else {
                    out.push(up);
                }
            }
            if out.is_empty() {
                c.issue(
                    "shadow.methods",
                    "must list at least one method, e.g. [\"GET\"]",
                );
            }
            out
        }
    };
    if raw.sticky_header.is_some() && raw.sticky_cookie.is_some() {
        c.issue(
            "shadow.sticky_cookie",
            "set sticky_header or sticky_cookie, not both",
        );
    }
    let sticky_header = raw
        .sticky_header
        .as_deref()
        .and_then(|h| header_name(c, "shadow.sticky_header", h));
    let sticky_cookie = raw.sticky_cookie.clone();
    if sticky_cookie
        .as_deref()
        .is_some_and(|s| s.is_empty() || s.contains([';', '=', ' ', ',']))
    {
        c.issue("shadow.sticky_cookie", "not a valid cookie name");
    }
    let ignore_headers = raw
        .ignore_headers
        .iter()
        .filter_map(|h| header_name(c, "shadow.ignore_headers", h))
        .collect();
    for p in &raw.ignore_paths {
        if !p.starts_with('/') {
            c.issue(
                "shadow.ignore_paths",
                format!("{p:?} is not a JSON pointer: it must start with '/', e.g. \"/meta/generated_at\""),
            );
        }
    }
    ShadowConfig {
        percent: c.percent("shadow.percent", raw.percent, d.percent),
        methods,
        sticky_header,
        sticky_cookie,
        max_request_body: c.int(
            "shadow.max_request_body",
            raw.max_request_body,
            d.max_request_body as i64,
            0,
            64 << 20,
        ) as usize,
        max_response_body: c.int(
            "shadow.max_response_body",
            raw.max_response_body,
            d.max_response_body as i64,
            0,
            64 << 20,
        ) as usize,
        ignore_headers,
        ignore_paths: raw.ignore_paths.clone(),
        concurrency: c.int(
            "shadow.concurrency",
            raw.concurrency,
            d.concurrency as i64,
            1,
            10_000,
        ) as usize,
        queue: c.int("shadow.queue", raw.queue, d.queue as i64, 1, 1_000_000) as usize,
        timeout: c.duration("shadow.timeout", raw.timeout.as_deref(), d.timeout),
        noise_percent: c.percent("shadow.noise_percent", raw.noise_percent, d.noise_percent),
    }
}

pub(super) fn validate_step(raw: &RawShadowStep, c: &mut Checker) -> ShadowStep {
    let step = ShadowStep {
        duration: c.duration(
            "deploy.shadow.duration",
            raw.duration.as_deref(),
            Duration::from_secs(30),
        ),
        requests: raw
            .requests
            .map(|r| c.int("deploy.shadow.requests", Some(r), 1, 1, i64::MAX) as u64),
        percent: raw
            .percent
            .map(|p| c.percent("deploy.shadow.percent", Some(p), 100.0)),
        gate: Gate {
            min_requests: c.int(
                "deploy.shadow.min_requests",
                raw.min_requests,
                10,
                0,
                i64::MAX,
            ) as u64,
            max_diff_rate: c.fraction("deploy.shadow.max_diff_rate", raw.max_diff_rate, 0.01),
            max_p99_ratio: c.ratio("deploy.shadow.max_p99_ratio", raw.max_p99_ratio),
        },
    };
    if let Some(r) = step.requests {
        if r < step.gate.min_requests {
            c.issue(
                "deploy.shadow.requests",
                format!(
                    "{r} is below deploy.shadow.min_requests ({}): the step could never pass",
                    step.gate.min_requests
                ),
            );
        }
    }
    step
}

pub(super) fn validate_warm(raw: &RawWarm, base: &Path, c: &mut Checker) -> Option<WarmStep> {
    let Some(file) = raw.file.as_deref() else {
        c.issue(
            "deploy.warm.file",
            "missing: the record file to replay (from `bluegreen record`)",
        );
        return None;
    };
    let speed = raw.speed.clone().unwrap_or_else(|| "max".into());
    let speed_ok = speed == "max"
        || speed
            .strip_suffix('x')
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|x| x > 0.0);
    if !speed_ok {
        c.issue(
            "deploy.warm.speed",
            format!("{speed:?}: expected \"max\" or a factor like \"1x\", \"2.5x\""),
        );
    }
    let path = PathBuf::from(file);
    Some(WarmStep {
        file: if path.is_absolute() {
            path
        } else {
            base.join(path)
        },
        speed,
        concurrency: c.int("deploy.warm.concurrency", raw.concurrency, 8, 1, 10_000) as usize,
        loop_for: raw
            .loop_for
            .as_deref()
            .map(|d| c.duration("deploy.warm.loop_for", Some(d), Duration::from_secs(60))),
        methods: match &raw.methods {
            None => SAFE_METHODS.iter().map(|m| m.to_string()).collect(),
            Some(list) if list.is_empty() => {
                c.issue("deploy.warm.methods", "must list at least one method");
                Vec::new()
            }
            Some(list) => list.iter().map(|m| m.to_ascii_uppercase()).collect(),
        },
    })
}
