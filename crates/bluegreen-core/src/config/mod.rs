//! Configuration: the raw TOML schema and the validated form the router uses.
//!
//! Raw and validated config are different types. Parsing rejects unknown keys;
//! validation collects every problem with the key it belongs to, so one run of
//! `bluegreen check` shows all of them. Nothing is started from a config that
//! did not validate whole.

pub mod analysis;
pub mod changes;
mod checker;
pub mod deploy;
mod environments;
#[cfg(test)]
pub(crate) mod keys;
pub mod migrations;
pub mod notify;
pub mod router;
mod sections;
pub mod shadow;
mod state;
mod template;
mod tls;

use checker::Checker;
use environments::validate_environments;
pub use environments::MAX_UPSTREAMS;
use sections::{validate_admin, validate_health, validate_proxy};
pub use state::{EtcdConfig, EtcdTls, StateConfig};
pub use tls::{AcmeChallenge, AcmeConfig, CertificatePair, TlsConfig, TlsVersion};

use crate::side::{Side, Sides};
pub use deploy::DeployConfig;
use serde::Deserialize;
pub use shadow::ShadowConfig;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (for messages), if any.
    pub source: Option<PathBuf>,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub health: HealthConfig,
    pub environments: Sides<EnvironmentConfig>,
    pub switch: SwitchConfig,
    /// The deploy pipeline; `None` when the config has no `[deploy]` table.
    pub deploy: Option<DeployConfig>,
    /// How live traffic is mirrored to the idle side (`bluegreen shadow`).
    pub shadow: ShadowConfig,
    /// Where recordings of live traffic go (`bluegreen record`).
    pub record: RecordConfig,
    /// HTTPS listeners, when the config has a `[tls]` table.
    pub tls: Option<TlsConfig>,
    /// Sessions kept on the old side after a switch, when `[sessions]` is set.
    pub sessions: Option<SessionsConfig>,
    /// The router that carries live traffic (`[router]`).
    pub router: router::RouterKind,
    /// Where notices go (`[[notify]]`).
    pub notify: Vec<notify::Hook>,
}

/// `[sessions]`: after a switch, clients with a session on the old side
/// stay there for `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    pub window: Duration,
    /// Our signed cookie naming the side that served a client.
    pub cookie: String,
    /// When set, only clients carrying this cookie of the app are pinned.
    pub app_cookie: Option<String>,
}

/// Recordings are written only inside this directory, under a plain name:
/// the admin API can never be made to write anywhere else.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordConfig {
    pub dir: PathBuf,
}

/// The data plane's listeners and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Live traffic.
    pub listen: SocketAddr,
    /// Traffic to the idle side only (preview), if enabled.
    pub preview_listen: Option<SocketAddr>,
    pub balance: Balance,
    /// Limit for opening a connection to an upstream.
    pub connect_timeout: Duration,
    /// Limit for an upstream's response headers to arrive (then 504).
    pub upstream_timeout: Duration,
    /// Idle keep-alive connections from clients are closed after this.
    pub idle_timeout: Duration,
    /// Largest request head accepted (then 431).
    pub max_header_bytes: usize,
    /// Open client connections accepted at once; more wait in the backlog.
    pub max_connections: usize,
    /// Extra attempts on another upstream when connecting fails. Nothing was
    /// sent then, so every request may be retried, body and all.
    pub retries: u32,
    /// Requests one upstream serves at once (HAProxy's `maxconn`); more
    /// wait in its queue, in arrival order. 0: no limit.
    pub upstream_max_requests: usize,
    /// Requests that may wait in one upstream's queue; more get 503.
    pub upstream_max_queue: usize,
    /// The longest a request waits in an upstream's queue (then 503 with
    /// `Retry-After`; HAProxy's `timeout queue`).
    pub upstream_queue_timeout: Duration,
    /// A client that sends no request body bytes for this long gets a 408.
    pub client_body_timeout: Duration,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are believed
    /// (a load balancer in front); from anyone else those headers are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// One log line per request (target `bluegreen::access`; JSON with `--log-format json`).
    pub access_log: bool,
    /// Answers from the app say which side served them (`X-Bluegreen-Side`).
    pub side_header: bool,
    /// Runtime worker threads; `None` means one per CPU.
    pub workers: Option<usize>,
    /// What keeps a client on one side of a weighted split: this request
    /// header's value, else this cookie's, else the client address.
    pub sticky_header: Option<String>,
    pub sticky_cookie: Option<String>,
}

/// How a request picks an upstream among the healthy ones of a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastOutstanding,
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token.
    pub token_env: String,
    /// HTTPS for the admin API (required when it listens beyond loopback,
    /// unless `allow_remote_plaintext`).
    pub tls: Option<CertificatePair>,
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// One environment: the upstream instances that serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentConfig {
    /// `host:port` authorities, in config order.
    pub upstreams: Vec<String>,
    /// Speak HTTPS to these upstreams, when set.
    pub tls: Option<UpstreamTlsConfig>,
}

/// `[environments.SIDE.tls]`: HTTPS to a side's upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// The name sent by SNI and checked in the upstream's certificate
    /// (default: each upstream's own host).
    pub server_name: Option<String>,
    /// PEM roots to trust (default: the system's).
    pub ca: Option<PathBuf>,
}

/// Switch behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchConfig {
    /// How long the old side's in-flight requests and upgraded connections may run on.
    pub drain_timeout: Duration,
    /// The live side when no state has been saved yet.
    pub initial_live: Side,
}

/// One problem in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `environments.blue.upstreams[0]`; empty for whole-file problems.
    pub key: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "invalid config {}: {} problem{}",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            if issue.key.is_empty() {
                write!(f, "\n  - {}", issue.message)?;
            } else {
                write!(f, "\n  - {}: {}", issue.key, issue.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---- raw schema -------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct RawConfig {
    proxy: RawProxy,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    state: state::RawState,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    switch: RawSwitch,
    deploy: Option<deploy::RawDeploy>,
    shadow: Option<shadow::RawShadow>,
    #[serde(default)]
    record: RawRecord,
    tls: Option<tls::RawTls>,
    sessions: Option<RawSessions>,
    #[serde(default)]
    router: router::RawRouter,
    #[serde(default)]
    notify: Vec<notify::RawHook>,
}

#[derive(Debug, Deserialize)]
struct RawSessions {
    window: Option<String>,
    cookie: Option<String>,
    app_cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRecord {
    dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawProxy {
    listen: String,
    preview_listen: Option<String>,
    balance: Option<String>,
    connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_header_bytes: Option<i64>,
    max_connections: Option<i64>,
    retries: Option<i64>,
    upstream_max_requests: Option<i64>,
    upstream_max_queue: Option<i64>,
    upstream_queue_timeout: Option<String>,
    client_body_timeout: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    workers: Option<i64>,
    access_log: Option<bool>,
    side_header: Option<bool>,
    sticky_header: Option<String>,
    sticky_cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAdmin {
    listen: Option<String>,
    token_env: Option<String>,
    allow_remote: Option<bool>,
    allow_remote_plaintext: Option<bool>,
    tls: Option<RawAdminTls>,
}

#[derive(Debug, Deserialize)]
struct RawAdminTls {
    cert: String,
    key: String,
}

#[derive(Debug, Default, Deserialize)]
struct RawHealth {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<i64>,
    unhealthy_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawEnvironment {
    upstreams: Vec<String>,
    tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
struct RawUpstreamTls {
    server_name: Option<String>,
    ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSwitch {
    drain_timeout: Option<String>,
    initial_live: Option<String>,
}

// ---- validation -------------------------------------------------------------

/// The longest duration any key accepts: far beyond any sane setting, and
/// far from where adding it to a clock would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            issues: vec![ConfigIssue {
                key: String::new(),
                message: format!("cannot read file: {e}"),
            }],
        })?;
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Absolute, so hooks and app processes find their files whatever their working directory.
        let base = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        let mut cfg = Config::parse(&text, &path.display().to_string(), &base)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates config text. `file` names it in errors; relative
    /// paths in it are resolved against `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        // Unknown keys are collected, not fatal at the first one, so one run
        // of `check` lists every problem.
        let mut unknown = Vec::new();
        let parsed: Result<RawConfig, _> = serde_ignored::deserialize(
            toml::Deserializer::parse(text).map_err(|e| ConfigError {
                file: file.to_string(),
                issues: vec![ConfigIssue {
                    key: String::new(),
                    message: e.to_string().trim_end().to_string(),
                }],
            })?,
            // serde_ignored writes `?` for each Option on the way: keys only.
            |path| {
                let key: Vec<String> = path
                    .to_string()
                    .split('.')
                    .filter(|k| *k != "?")
                    .map(str::to_string)
                    .collect();
                unknown.push(key.join("."))
            },
        );
        let mut c = Checker { issues: Vec::new() };
        for key in unknown {
            let line = line_of(text, key.rsplit('.').next().unwrap_or(&key))
                .map(|n| format!(" at line {n}"))
                .unwrap_or_default();
            c.issue(
                &key,
                format!("unknown key{line} (misspelled, or not in this version)"),
            );
        }
        let raw = match parsed {
            Ok(raw) => raw,
            Err(e) => {
                c.issue("", e.to_string().trim_end());
                return Err(ConfigError {
                    file: file.to_string(),
                    issues: c.issues,
                });
            }
        };
        let cfg = validate(raw, base, &mut c);
        if c.issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                file: file.to_string(),
                issues: c.issues,
            })
        }
    }
}

fn validate(raw: RawConfig, base: &Path, c: &mut Checker) -> Config {
    let proxy = validate_proxy(&raw.proxy, c);
    let admin = validate_admin(&raw.admin, base, c);
    let health = validate_health(&raw.health, c);
    let mut ours = vec![
        ("proxy.listen", proxy.listen),
        ("admin.listen", admin.listen),
    ];
    if let Some(p) = proxy.preview_listen {
        ours.push(("proxy.preview_listen", p));
    }
    let tls = raw.tls.as_ref().and_then(|t| tls::validate_tls(t, base, c));
    if let Some(t) = &tls {
        for (key, addr) in [
            ("tls.listen", Some(t.listen)),
            ("tls.preview_listen", t.preview_listen),
        ] {
            let Some(addr) = addr else { continue };
            if let Some((other, _)) = ours.iter().find(|(_, l)| addr.port() != 0 && *l == addr) {
                c.issue(key, format!("{addr} is already used by {other}"));
            }
            ours.push((key, addr));
        }
    }
    let environments = validate_environments(&raw.environments, &ours, base, c);
    let router = router::validate(&raw.router, base, &ours, c);

    for (key, addr) in [
        ("proxy.preview_listen", proxy.preview_listen),
        ("admin.listen", Some(admin.listen)),
    ] {
        if let Some(addr) = addr {
            if addr.port() != 0 && addr == proxy.listen {
                c.issue(key, format!("{addr} is already used by proxy.listen"));
            }
        }
    }
    if let Some(p) = proxy.preview_listen {
        if p.port() != 0 && p == admin.listen {
            c.issue(
                "admin.listen",
                format!("{p} is already used by proxy.preview_listen"),
            );
        }
    }

    let state = state::validate(&raw.state, base, c);
    let dir = state.dir.clone();
    let record_dir = match raw.record.dir.as_deref() {
        Some("") => {
            c.issue("record.dir", "must not be empty");
            dir.join("records")
        }
        Some(d) => base.join(d),
        None => dir.join("records"),
    };

    let drain_timeout = c.duration(
        "switch.drain_timeout",
        raw.switch.drain_timeout.as_deref(),
        Duration::from_secs(30),
    );
    let initial_live = match raw.switch.initial_live.as_deref() {
        None => Side::Blue,
        Some(s) => s.parse().unwrap_or_else(|e| {
            c.issue("switch.initial_live", format!("{e}"));
            Side::Blue
        }),
    };

    let deploy = raw
        .deploy
        .as_ref()
        .and_then(|d| deploy::validate(d, base, c, proxy.preview_listen.is_some()));
    if state.etcd.is_some() && tls.as_ref().is_some_and(|t| t.acme.is_some()) {
        c.issue(
            "tls.acme",
            "is not supported with state.backend = \"etcd\" yet (every node would order its own certificate and answer only its own challenges): give each node the same certificate files in tls.certificates",
        );
    }
    if let (Some(_), Some(d)) = (&state.etcd, &deploy) {
        if matches!(d.method, deploy::DeployMethod::Supervisor(_)) {
            c.issue(
                "deploy.supervisor",
                "the built-in supervisor starts apps on one node only; with state.backend = \"etcd\" deploy through [deploy.hooks] (deploy = \"...\") that reach the hosts every node routes to",
            );
        }
    }
    if state.etcd.is_some() && router != router::RouterKind::Builtin {
        c.issue(
            "router.kind",
            "a driven router is switched by one node; with state.backend = \"etcd\" the other nodes would not switch theirs: use one node, or the builtin router",
        );
    }
    let shadow = shadow::validate(raw.shadow.as_ref(), c);
    let sessions = raw.sessions.as_ref().map(|r| {
        let window = c.duration(
            "sessions.window",
            r.window.as_deref(),
            Duration::from_secs(1800),
        );
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let cookie = r.cookie.clone().unwrap_or_else(|| "bluegreen".into());
        if !name_ok(&cookie) {
            c.issue(
                "sessions.cookie",
                format!("{cookie:?} is not a cookie name (letters, digits, - _ .)"),
            );
        }
        if let Some(a) = &r.app_cookie {
            if !name_ok(a) {
                c.issue(
                    "sessions.app_cookie",
                    format!("{a:?} is not a cookie name (letters, digits, - _ .)"),
                );
            }
        }
        SessionsConfig {
            window,
            cookie,
            app_cookie: r.app_cookie.clone(),
        }
    });
    let notify = notify::validate(&raw.notify, c);
    Config {
        notify,
        sessions,
        router,
        source: None,
        deploy,
        shadow,
        record: RecordConfig { dir: record_dir },
        tls,
        proxy,
        admin,
        state,
        health,
        environments,
        switch: SwitchConfig {
            drain_timeout,
            initial_live,
        },
    }
}

/// The first line that sets `key` (`key = ...`) or opens a table named by it.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || (l.starts_with('[') && l.trim_end_matches(']').ends_with(&format!(".{key}")))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests;
