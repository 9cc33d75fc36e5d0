//! The `[deploy]` tables: how a version reaches the idle side (hooks or the
//! built-in supervisor), smoke tests, and the bake thresholds.

use super::Checker;
use crate::bake::Thresholds;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::template::{
    fill, placeholders, CommandTemplate, HOOK_VARS, RUN_VARS, SMOKE_COMMAND_VARS, SMOKE_HTTP_VARS,
};

/// Validated deploy pipeline settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    pub method: DeployMethod,
    /// How long the health gate waits for the idle side (slow boots are common).
    pub deploy_timeout: Duration,
    /// A manual gate aborts after this, if set.
    pub promote_timeout: Option<Duration>,
    /// The old side stays up this long after the bake, so rollback stays instant.
    pub keep_warm: Duration,
    /// A version that failed, was aborted or rolled back keeps running on the
    /// idle side this long (to be looked at), then it is stopped.
    pub keep_failed: Duration,
    /// Limit for one hook or smoke command.
    pub hook_timeout: Duration,
    pub smoke: Vec<SmokeCheck>,
    pub bake: BakeConfig,
    /// Replay recorded traffic to the idle side before the shadow step.
    pub warm: Option<super::shadow::WarmStep>,
    /// Shadow live traffic to the idle side and judge the differences before the switch.
    pub shadow: Option<super::shadow::ShadowStep>,
    /// Expand before the deploy, contract after the point of no return.
    pub migrations: Option<super::migrations::MigrationsConfig>,
    /// The user's own metrics (`[[deploy.analysis]]`), judged in the bake
    /// and canary steps.
    pub analysis: Vec<super::analysis::AnalysisMetric>,
    /// Directory commands run in (the config file's).
    pub workdir: PathBuf,
    /// An approval webhook the gate asks before the switch (`[deploy.gate]`).
    pub gate: Option<GateConfig>,
}

/// `[deploy.gate]`: the gate asks `webhook` (a POST with the release's
/// facts) until it answers 200 (promote) or 403 (abort, its body the
/// reason), or `promote_timeout` (1 h by default) passes.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    pub webhook: String,
    /// The variable holding a signing secret (as `[[notify]]`'s).
    pub secret_env: Option<String>,
    /// Between two questions.
    pub interval: Duration,
    /// The limit of one question.
    pub timeout: Duration,
}

/// How a version is put on a side.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployMethod {
    Hooks {
        deploy: CommandTemplate,
        decommission: Option<CommandTemplate>,
    },
    Supervisor(SupervisorConfig),
}

/// The built-in supervisor: one process per upstream of a side.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    pub run: CommandTemplate,
    pub env: BTreeMap<String, String>,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Stop the apps when `serve` exits; by default they keep running and are
    /// re-adopted by the next `serve`.
    pub stop_on_exit: bool,
    /// An app log larger than this is rotated (`.1`, `.2`, ...).
    pub log_max_bytes: u64,
    /// Rotated logs kept per app.
    pub log_files: u32,
}

/// One smoke test.
#[derive(Debug, Clone, PartialEq)]
pub enum SmokeCheck {
    Http(HttpCheck),
    Command {
        name: String,
        command: CommandTemplate,
    },
}

impl SmokeCheck {
    /// The check's name, for messages.
    pub fn name(&self) -> &str {
        match self {
            SmokeCheck::Http(h) => &h.name,
            SmokeCheck::Command { name, .. } => name,
        }
    }
}

/// A declarative HTTP smoke test, sent through the preview listener.
/// `{version}` and `{env}` may appear in the path, headers, body and expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub name: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub expect_status: u16,
    pub expect_body_contains: Option<String>,
    /// JSON pointer → expected value.
    pub expect_json: Vec<(String, serde_json::Value)>,
    pub max_latency: Option<Duration>,
    pub timeout: Duration,
}

/// The bake after the switch.
#[derive(Debug, Clone, PartialEq)]
pub struct BakeConfig {
    pub duration: Duration,
    pub interval: Duration,
    /// How far back before a deploy the old side's traffic (and its app's
    /// resources) are the baseline, beside the deploy's own time.
    pub baseline: Duration,
    pub thresholds: Thresholds,
    /// A latency breach rolls back only after holding this many windows in a
    /// row (error-rate breaches are instant).
    pub consecutive: u32,
    /// What a bake or canary share that saw fewer than `min_requests` does
    /// once it has waited as long again for them: never a silent pass.
    pub on_inconclusive: OnInconclusive,
}

/// A gate that saw too little traffic to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInconclusive {
    /// The deploy fails; traffic goes back to the old side.
    Fail,
    /// The deploy waits (`promote_timeout`) for `bluegreen promote` to accept
    /// it or `bluegreen abort` to end it.
    Hold,
    /// It passes, saying so in the record (as `--accept-inconclusive`).
    Accept,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDeploy {
    deploy_timeout: Option<String>,
    promote_timeout: Option<String>,
    keep_warm: Option<String>,
    keep_failed: Option<String>,
    hook_timeout: Option<String>,
    hooks: Option<RawHooks>,
    supervisor: Option<RawSupervisor>,
    #[serde(default)]
    smoke: Vec<RawSmoke>,
    bake: Option<RawBake>,
    warm: Option<super::shadow::RawWarm>,
    shadow: Option<super::shadow::RawShadowStep>,
    migrations: Option<super::migrations::RawMigrations>,
    #[serde(default)]
    analysis: Vec<super::analysis::RawAnalysis>,
    gate: Option<RawGate>,
}

#[derive(Debug, Deserialize)]
struct RawGate {
    webhook: Option<String>,
    secret_env: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
}

fn gate(raw: &RawGate, c: &mut Checker) -> Option<GateConfig> {
    let webhook = match raw.webhook.as_deref() {
        Some(u)
            if (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(char::is_whitespace) =>
        {
            Some(u.to_string())
        }
        Some(u) => {
            c.issue(
                "deploy.gate.webhook",
                format!("{u:?} is not an http:// or https:// URL"),
            );
            None
        }
        None => {
            c.issue(
                "deploy.gate.webhook",
                "missing: the URL the gate asks for approval",
            );
            None
        }
    };
    if let Some(v) = &raw.secret_env {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            c.issue(
                "deploy.gate.secret_env",
                format!("{v:?} is not a variable name"),
            );
        }
    }
    let interval = c.duration(
        "deploy.gate.interval",
        raw.interval.as_deref(),
        Duration::from_secs(10),
    );
    let timeout = c.duration(
        "deploy.gate.timeout",
        raw.timeout.as_deref(),
        Duration::from_secs(10),
    );
    Some(GateConfig {
        webhook: webhook?,
        secret_env: raw.secret_env.clone(),
        interval,
        timeout,
    })
}

#[derive(Debug, Deserialize)]
struct RawHooks {
    deploy: String,
    decommission: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawSupervisor {
    run: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_grace: Option<String>,
    stop_on_exit: Option<bool>,
    log_max_bytes: Option<i64>,
    log_files: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawSmoke {
    name: Option<String>,
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    expect_status: Option<i64>,
    expect_body_contains: Option<String>,
    #[serde(default)]
    expect_json: BTreeMap<String, toml::Value>,
    max_latency: Option<String>,
    timeout: Option<String>,
    command: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawBake {
    duration: Option<String>,
    interval: Option<String>,
    baseline: Option<String>,
    min_requests: Option<i64>,
    max_error_rate: Option<f64>,
    max_p99: Option<String>,
    error_rate_ratio: Option<f64>,
    p99_ratio: Option<f64>,
    max_4xx_increase: Option<f64>,
    rank_test: Option<bool>,
    latency_ratio: Option<f64>,
    latency_min_increase: Option<String>,
    significance: Option<f64>,
    consecutive: Option<i64>,
    on_inconclusive: Option<String>,
}

pub(super) fn validate(
    raw: &RawDeploy,
    base: &Path,
    c: &mut Checker,
    has_preview: bool,
) -> Option<DeployConfig> {
    let method = deploy_method(raw, base, c);
    let smoke = smoke_checks(raw, base, c, has_preview);
    let bake = bake(raw, c);
    let hooks = matches!(method, Some(DeployMethod::Hooks { .. }));
    let analysis = super::analysis::validate(&raw.analysis, c, !hooks);
    let config = DeployConfig {
        method: method?,
        deploy_timeout: c.duration(
            "deploy.deploy_timeout",
            raw.deploy_timeout.as_deref(),
            Duration::from_secs(120),
        ),
        promote_timeout: raw
            .promote_timeout
            .as_deref()
            .map(|p| c.duration("deploy.promote_timeout", Some(p), Duration::from_secs(3600))),
        keep_warm: match raw.keep_warm.as_deref() {
            None | Some("0") | Some("0s") => Duration::ZERO,
            Some(k) => c.duration("deploy.keep_warm", Some(k), Duration::ZERO),
        },
        keep_failed: match raw.keep_failed.as_deref() {
            Some("0") | Some("0s") => Duration::ZERO,
            k => c.duration("deploy.keep_failed", k, Duration::from_secs(300)),
        },
        hook_timeout: c.duration(
            "deploy.hook_timeout",
            raw.hook_timeout.as_deref(),
            Duration::from_secs(600),
        ),
        smoke,
        bake,
        warm: raw
            .warm
            .as_ref()
            .and_then(|w| super::shadow::validate_warm(w, base, c)),
        shadow: raw
            .shadow
            .as_ref()
            .map(|s| super::shadow::validate_step(s, c)),
        migrations: raw
            .migrations
            .as_ref()
            .and_then(|m| super::migrations::validate(m, base, c)),
        analysis,
        workdir: base.to_path_buf(),
        gate: raw.gate.as_ref().and_then(|g| gate(g, c)),
    };
    Some(config)
}

/// `[deploy.hooks]` or `[deploy.supervisor]`: exactly one of them.
fn deploy_method(raw: &RawDeploy, base: &Path, c: &mut Checker) -> Option<DeployMethod> {
    match (&raw.hooks, &raw.supervisor) {
        (Some(h), None) => {
            let deploy = c.template("deploy.hooks.deploy", &h.deploy, HOOK_VARS, base);
            let decommission = h
                .decommission
                .as_deref()
                .map(|d| c.template("deploy.hooks.decommission", d, HOOK_VARS, base));
            match (deploy, decommission) {
                (Some(deploy), None) => Some(DeployMethod::Hooks {
                    deploy,
                    decommission: None,
                }),
                (Some(deploy), Some(Some(d))) => Some(DeployMethod::Hooks {
                    deploy,
                    decommission: Some(d),
                }),
                _ => None,
            }
        }
        (None, Some(s)) => {
            let run = c.template("deploy.supervisor.run", &s.run, RUN_VARS, base);
            if !placeholders(&s.run)
                .iter()
                .any(|p| p == "port" || p == "address")
            {
                c.issue("deploy.supervisor.run", "must use {port} or {address}: each process serves one upstream address of its side");
            }
            let stop_grace = c.duration(
                "deploy.supervisor.stop_grace",
                s.stop_grace.as_deref(),
                Duration::from_secs(10),
            );
            let log_max_bytes = c.int(
                "deploy.supervisor.log_max_bytes",
                s.log_max_bytes,
                10 << 20,
                4096,
                1 << 40,
            ) as u64;
            let log_files = c.int("deploy.supervisor.log_files", s.log_files, 3, 1, 100) as u32;
            run.map(|run| {
                DeployMethod::Supervisor(SupervisorConfig {
                    run,
                    env: s.env.clone(),
                    stop_grace,
                    stop_on_exit: s.stop_on_exit.unwrap_or(false),
                    log_max_bytes,
                    log_files,
                })
            })
        }
        (Some(_), Some(_)) => {
            c.issue(
                "deploy",
                "set either [deploy.hooks] or [deploy.supervisor], not both",
            );
            None
        }
        (None, None) => {
            c.issue("deploy", "missing [deploy.hooks] (deploy = \"command\") or [deploy.supervisor] (run = \"command\")");
            None
        }
    }
}

/// `[[deploy.smoke]]`: each check, and the preview listener HTTP checks need.
fn smoke_checks(
    raw: &RawDeploy,
    base: &Path,
    c: &mut Checker,
    has_preview: bool,
) -> Vec<SmokeCheck> {
    let mut smoke = Vec::new();
    for (i, s) in raw.smoke.iter().enumerate() {
        let key = format!("deploy.smoke[{i}]");
        if let Some(check) = smoke_check(&key, s, base, c) {
            smoke.push(check);
        }
    }
    if smoke.iter().any(|s| matches!(s, SmokeCheck::Http(_))) && !has_preview {
        c.issue(
            "deploy.smoke",
            "HTTP smoke tests run through the preview listener: set proxy.preview_listen",
        );
    }

    smoke
}

/// `deploy.bake.significance`: the p-value the error and latency tests
/// must reach (0.001 by default).
fn significance(b: Option<&RawBake>, c: &mut Checker) -> f64 {
    match b.and_then(|b| b.significance) {
        None => 0.001,
        Some(a) if a > 0.0 && a <= 0.05 => a,
        Some(a) => {
            c.issue(
                "deploy.bake.significance",
                format!("{a} is out of range: expected a p-value above 0 and at most 0.05 (0.001 = 99.9 % confidence)"),
            );
            0.001
        }
    }
}

/// The rank test's rule (`rank_test`, `latency_ratio`, `significance`):
/// on by default: a quarter slower, by 2 ms at least, at 99.9 % confidence.
fn rank_rule(b: Option<&RawBake>, c: &mut Checker) -> Option<crate::rank::ShiftRule> {
    let ratio = c
        .ratio("deploy.bake.latency_ratio", b.and_then(|b| b.latency_ratio))
        .unwrap_or(1.25);
    let alpha = significance(b, c);
    b.and_then(|b| b.rank_test)
        .unwrap_or(true)
        .then_some(crate::rank::ShiftRule {
            alpha,
            min_ratio: ratio,
            min_shift: c
                .duration(
                    "deploy.bake.latency_min_increase",
                    b.and_then(|b| b.latency_min_increase.as_deref()),
                    Duration::from_millis(2),
                )
                .as_micros() as f64,
            min_samples: 20,
        })
}

/// `[deploy.bake]`: durations, thresholds, and that the windows fit.
fn bake(raw: &RawDeploy, c: &mut Checker) -> BakeConfig {
    let b = raw.bake.as_ref();
    let bake = BakeConfig {
        duration: c.duration(
            "deploy.bake.duration",
            b.and_then(|b| b.duration.as_deref()),
            Duration::from_secs(60),
        ),
        interval: c.duration(
            "deploy.bake.interval",
            b.and_then(|b| b.interval.as_deref()),
            Duration::from_secs(5),
        ),
        baseline: c.duration(
            "deploy.bake.baseline",
            b.and_then(|b| b.baseline.as_deref()),
            Duration::from_secs(60),
        ),
        thresholds: Thresholds {
            min_requests: c.int(
                "deploy.bake.min_requests",
                b.and_then(|b| b.min_requests),
                20,
                1,
                1_000_000_000,
            ) as u64,
            max_error_rate: c.fraction(
                "deploy.bake.max_error_rate",
                b.and_then(|b| b.max_error_rate),
                0.01,
            ),
            max_p99: b
                .and_then(|b| b.max_p99.as_deref())
                .map(|p| c.duration("deploy.bake.max_p99", Some(p), Duration::from_secs(1))),
            significance: significance(b, c),
            error_rate_ratio: c
                .ratio(
                    "deploy.bake.error_rate_ratio",
                    b.and_then(|b| b.error_rate_ratio),
                )
                .or(Some(2.0)),
            p99_ratio: c.ratio("deploy.bake.p99_ratio", b.and_then(|b| b.p99_ratio)),
            max_4xx_increase: Some(c.fraction(
                "deploy.bake.max_4xx_increase",
                b.and_then(|b| b.max_4xx_increase),
                0.2,
            )),
            latency_shift: rank_rule(b, c),
        },
        consecutive: c.int(
            "deploy.bake.consecutive",
            b.and_then(|b| b.consecutive),
            2,
            1,
            100,
        ) as u32,
        on_inconclusive: match b.and_then(|b| b.on_inconclusive.as_deref()) {
            None | Some("fail") => OnInconclusive::Fail,
            Some("hold") => OnInconclusive::Hold,
            Some("accept") => OnInconclusive::Accept,
            Some(other) => {
                c.issue(
                    "deploy.bake.on_inconclusive",
                    format!("{other:?}: one of \"fail\" (the default), \"hold\", \"accept\""),
                );
                OnInconclusive::Fail
            }
        },
    };
    if bake.interval > bake.duration {
        c.issue(
            "deploy.bake.interval",
            "must not be longer than deploy.bake.duration",
        );
    } else if (bake.thresholds.max_p99.is_some() || bake.thresholds.p99_ratio.is_some())
        && bake.interval * bake.consecutive > bake.duration
    {
        c.issue(
            "deploy.bake.consecutive",
            format!(
                "{} windows of {} do not fit in deploy.bake.duration ({}): a latency breach could never roll back",
                bake.consecutive,
                humantime::format_duration(bake.interval),
                humantime::format_duration(bake.duration)
            ),
        );
    }
    bake
}

fn smoke_check(key: &str, s: &RawSmoke, base: &Path, c: &mut Checker) -> Option<SmokeCheck> {
    let name = s.name.clone().unwrap_or_else(|| key.to_string());
    if let Some(cmd) = &s.command {
        if s.path.is_some() || s.method.is_some() || s.body.is_some() || s.expect_status.is_some() {
            c.issue(
                key,
                "a smoke test is either a command or an HTTP check (path = ...), not both",
            );
        }
        let command = c.template(&format!("{key}.command"), cmd, SMOKE_COMMAND_VARS, base)?;
        return Some(SmokeCheck::Command { name, command });
    }
    let Some(path) = s.path.clone() else {
        c.issue(
            key,
            "needs a path (an HTTP check, e.g. path = \"/\") or a command",
        );
        return None;
    };
    if !path.starts_with('/') {
        c.issue(
            format!("{key}.path"),
            format!("{path:?} must start with '/'"),
        );
    }
    let method = s
        .method
        .clone()
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        c.issue(
            format!("{key}.method"),
            format!("{method:?} is not an HTTP method"),
        );
    }
    let expect_status = c.int(
        &format!("{key}.expect_status"),
        s.expect_status,
        200,
        100,
        599,
    ) as u16;
    let mut texts = vec![path.clone()];
    texts.extend(s.body.clone());
    texts.extend(s.expect_body_contains.clone());
    texts.extend(s.headers.values().cloned());
    let mut expect_json = Vec::new();
    for (pointer, value) in &s.expect_json {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            c.issue(
                format!("{key}.expect_json"),
                format!("{pointer:?} is not a JSON pointer (like \"/status\" or \"/items/0/id\")"),
            );
        }
        match serde_json::to_value(value) {
            Ok(v) => {
                if let Some(s) = v.as_str() {
                    texts.push(s.to_string());
                }
                expect_json.push((pointer.clone(), v));
            }
            Err(e) => c.issue(format!("{key}.expect_json"), format!("{pointer}: {e}")),
        }
    }
    for t in &texts {
        c.text_vars(key, t, SMOKE_HTTP_VARS);
    }
    Some(SmokeCheck::Http(HttpCheck {
        name,
        method,
        path,
        headers: s
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: s.body.clone(),
        expect_status,
        expect_body_contains: s.expect_body_contains.clone(),
        expect_json,
        max_latency: s.max_latency.as_deref().map(|m| {
            c.duration(
                &format!("{key}.max_latency"),
                Some(m),
                Duration::from_secs(1),
            )
        }),
        timeout: c.duration(
            &format!("{key}.timeout"),
            s.timeout.as_deref(),
            Duration::from_secs(10),
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("./r/{version}/app --port {port} {{x}} {Nope} {}"),
            vec!["version", "port", "x"]
        );
        assert_eq!(
            fill("a-{version}-{env}", &[("version", "v2"), ("env", "green")]),
            "a-v2-green"
        );
    }
}
