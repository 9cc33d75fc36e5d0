//! Configuration: the raw TOML schema and the validated form the router uses.
//!
//! Raw and validated config are different types. Parsing rejects unknown keys;
//! validation collects every problem with the key it belongs to, so one run of
//! `bluegreen check` shows all of them. Nothing is started from a config that
//! did not validate whole.

pub mod deploy;
pub mod shadow;

use crate::side::{Side, Sides};
pub use deploy::DeployConfig;
use serde::Deserialize;
pub use shadow::ShadowConfig;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Validated configuration.
#[derive(Debug, Clone)]
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
}

/// Recordings are written only inside this directory, under a plain name:
/// the admin API can never be made to write anywhere else.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub dir: PathBuf,
}

/// The data plane's listeners and limits.
#[derive(Debug, Clone)]
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
    /// A client that sends no request body bytes for this long gets a 408.
    pub client_body_timeout: Duration,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are believed
    /// (a load balancer in front); from anyone else those headers are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// One log line per request (target `bluegreen::access`; JSON with `--log-format json`).
    pub access_log: bool,
    /// Runtime worker threads; `None` means one per CPU.
    pub workers: Option<usize>,
}

/// How a request picks an upstream among the healthy ones of a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastOutstanding,
}

/// The admin API listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token.
    pub token_env: String,
}

/// Where the embedded store keeps its files.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: PathBuf,
}

/// Active health checks.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// One environment: the upstream instances that serve it.
#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    /// `host:port` authorities, in config order.
    pub upstreams: Vec<String>,
}

/// Switch behaviour.
#[derive(Debug, Clone)]
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
    state: RawState,
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
    client_body_timeout: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    workers: Option<i64>,
    access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAdmin {
    listen: Option<String>,
    token_env: Option<String>,
    allow_remote: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawState {
    dir: Option<String>,
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

/// Collects issues while converting raw values.
struct Checker {
    issues: Vec<ConfigIssue>,
}

impl Checker {
    fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, key: &str, raw: &str) -> Option<SocketAddr> {
        match raw.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(
                    key,
                    format!("invalid address {raw:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw) {
            Ok(d) if d.is_zero() => {
                self.issue(key, format!("duration {raw:?} must be greater than zero"));
                default
            }
            Ok(d) if d > MAX_DURATION => {
                self.issue(
                    key,
                    format!(
                        "duration {raw:?} is too long: at most {}",
                        humantime::format_duration(MAX_DURATION)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.issue(
                    key,
                    format!("invalid duration {raw:?} ({e}): use a number with a unit, e.g. \"500ms\", \"2s\", \"1m\""),
                );
                default
            }
        }
    }

    fn int(&mut self, key: &str, raw: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let Some(v) = raw else { return default };
        if v < min || v > max {
            self.issue(key, format!("{v} is out of range: expected {min}..={max}"));
            return default;
        }
        v
    }

    fn upstream(&mut self, key: &str, raw: &str) -> Option<String> {
        if let Ok(a) = raw.parse::<SocketAddr>() {
            if a.port() == 0 {
                self.issue(
                    key,
                    format!("invalid upstream {raw:?}: port 0 is not a port to connect to"),
                );
                return None;
            }
            return Some(raw.to_string());
        }
        let valid = raw.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if valid {
            Some(raw.to_string())
        } else {
            self.issue(
                key,
                format!("invalid upstream {raw:?}: expected HOST:PORT, e.g. \"127.0.0.1:9001\""),
            );
            None
        }
    }
}

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
    let admin = validate_admin(&raw.admin, c);
    let health = validate_health(&raw.health, c);
    let mut ours = vec![
        ("proxy.listen", proxy.listen),
        ("admin.listen", admin.listen),
    ];
    if let Some(p) = proxy.preview_listen {
        ours.push(("proxy.preview_listen", p));
    }
    let environments = validate_environments(&raw.environments, &ours, c);

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

    let dir = raw.state.dir.as_deref().unwrap_or(".bluegreen");
    if dir.is_empty() {
        c.issue("state.dir", "must not be empty");
    }
    let dir = base.join(dir);
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
    let shadow = shadow::validate(raw.shadow.as_ref(), c);
    Config {
        source: None,
        deploy,
        shadow,
        record: RecordConfig { dir: record_dir },
        proxy,
        admin,
        state: StateConfig { dir },
        health,
        environments,
        switch: SwitchConfig {
            drain_timeout,
            initial_live,
        },
    }
}

fn validate_proxy(raw: &RawProxy, c: &mut Checker) -> ProxyConfig {
    let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
    let listen = c.addr("proxy.listen", &raw.listen).unwrap_or(unspecified);
    let preview_listen = raw
        .preview_listen
        .as_deref()
        .and_then(|p| c.addr("proxy.preview_listen", p));
    let balance = match raw.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_outstanding") => Balance::LeastOutstanding,
        Some(other) => {
            c.issue(
                "proxy.balance",
                format!(
                    "unknown balance {other:?}: expected \"round_robin\" or \"least_outstanding\""
                ),
            );
            Balance::RoundRobin
        }
    };
    ProxyConfig {
        listen,
        preview_listen,
        balance,
        connect_timeout: c.duration(
            "proxy.connect_timeout",
            raw.connect_timeout.as_deref(),
            Duration::from_secs(2),
        ),
        upstream_timeout: c.duration(
            "proxy.upstream_timeout",
            raw.upstream_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        idle_timeout: c.duration(
            "proxy.idle_timeout",
            raw.idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_header_bytes: c.int(
            "proxy.max_header_bytes",
            raw.max_header_bytes,
            64 * 1024,
            8192,
            16 * 1024 * 1024,
        ) as usize,
        max_connections: c.int(
            "proxy.max_connections",
            raw.max_connections,
            20_000,
            1,
            10_000_000,
        ) as usize,
        retries: c.int("proxy.retries", raw.retries, 1, 0, 10) as u32,
        client_body_timeout: c.duration(
            "proxy.client_body_timeout",
            raw.client_body_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        trusted_proxies: trusted_proxies(&raw.trusted_proxies, c),
        access_log: raw.access_log.unwrap_or(false),
        workers: raw
            .workers
            .map(|w| c.int("proxy.workers", Some(w), 1, 1, 1024) as usize),
    }
}

/// `trusted_proxies`: addresses (`10.0.0.7`) or networks (`10.0.0.0/8`).
fn trusted_proxies(raw: &[String], c: &mut Checker) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let parsed = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => nets.push(n),
            Err(_) => c.issue(
                format!("proxy.trusted_proxies[{i}]"),
                format!("invalid address or network {entry:?}: expected e.g. \"10.0.0.7\" or \"10.0.0.0/8\""),
            ),
        }
    }
    nets
}

fn validate_admin(raw: &RawAdmin, c: &mut Checker) -> AdminConfig {
    let default = SocketAddr::from(([127, 0, 0, 1], 9901));
    let listen = raw
        .listen
        .as_deref()
        .and_then(|l| c.addr("admin.listen", l))
        .unwrap_or(default);
    if !listen.ip().is_loopback() && raw.allow_remote != Some(true) {
        c.issue(
            "admin.listen",
            format!("{listen} is not a loopback address; set admin.allow_remote = true to expose the admin API beyond this host"),
        );
    }
    let token_env = raw
        .token_env
        .clone()
        .unwrap_or_else(|| "BLUEGREEN_TOKEN".into());
    if token_env.is_empty() || token_env.contains('=') || token_env.contains('\0') {
        c.issue(
            "admin.token_env",
            format!("{token_env:?} is not a valid environment variable name"),
        );
    }
    AdminConfig { listen, token_env }
}

fn validate_health(raw: &RawHealth, c: &mut Checker) -> HealthConfig {
    let path = raw.path.clone().unwrap_or_else(|| "/healthz".into());
    // A request target: absolute, no spaces or control characters.
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        c.issue(
            "health.path",
            format!("{path:?} must be an absolute path starting with '/'"),
        );
    }
    HealthConfig {
        path,
        interval: c.duration(
            "health.interval",
            raw.interval.as_deref(),
            Duration::from_secs(1),
        ),
        timeout: c.duration(
            "health.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(2),
        ),
        healthy_threshold: c.int("health.healthy_threshold", raw.healthy_threshold, 2, 1, 100)
            as u32,
        unhealthy_threshold: c.int(
            "health.unhealthy_threshold",
            raw.unhealthy_threshold,
            3,
            1,
            100,
        ) as u32,
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

/// At most this many upstreams per side (a request's tried set is a `u64`).
pub const MAX_UPSTREAMS: usize = 64;

/// The address an upstream names, for comparisons: `localhost` is
/// 127.0.0.1 (what it resolves to first), and host names compare without
/// case. `[::1]:P` and `127.0.0.1:P` are different sockets.
fn canonical_upstream(u: &str) -> String {
    match u.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => format!("127.0.0.1:{port}"),
        _ => match u.parse::<SocketAddr>() {
            Ok(a) => a.to_string(),
            Err(_) => u.to_ascii_lowercase(),
        },
    }
}

/// True when connecting to upstream `u` would reach `listen`, one of our
/// own listeners: a request loop through ourselves.
fn reaches(u: &str, listen: SocketAddr) -> bool {
    let Ok(target) = canonical_upstream(u).parse::<SocketAddr>() else {
        return false;
    };
    if target.port() != listen.port() || listen.port() == 0 {
        return false;
    }
    let ip = target.ip();
    ip == listen.ip() || (listen.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
}

fn validate_environments(
    raw: &BTreeMap<String, RawEnvironment>,
    ours: &[(&str, SocketAddr)],
    c: &mut Checker,
) -> Sides<EnvironmentConfig> {
    for name in raw.keys() {
        if name.parse::<Side>().is_err() {
            c.issue(
                format!("environments.{name}"),
                "unknown environment: expected exactly [environments.blue] and [environments.green]",
            );
        }
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    Sides::from_fn(|side| {
        let key = format!("environments.{side}");
        let Some(env) = raw.get(side.as_str()) else {
            c.issue(
                &key,
                format!("missing: add a [{key}] table with upstreams = [\"HOST:PORT\", ...]"),
            );
            return EnvironmentConfig {
                upstreams: Vec::new(),
            };
        };
        if env.upstreams.is_empty() {
            c.issue(
                format!("{key}.upstreams"),
                "must list at least one upstream",
            );
        }
        if env.upstreams.len() > MAX_UPSTREAMS {
            c.issue(
                format!("{key}.upstreams"),
                format!(
                    "{} upstreams: at most {MAX_UPSTREAMS} per side",
                    env.upstreams.len()
                ),
            );
        }
        let mut upstreams = Vec::new();
        for (i, u) in env.upstreams.iter().enumerate() {
            let ukey = format!("{key}.upstreams[{i}]");
            let Some(u) = c.upstream(&ukey, u) else {
                continue;
            };
            if let Some((lkey, l)) = ours.iter().find(|(_, l)| reaches(&u, *l)) {
                c.issue(&ukey, format!("{u} is this router's own {lkey} ({l}): requests would loop through bluegreen"));
                continue;
            }
            match seen.insert(canonical_upstream(&u), ukey.clone()) {
                Some(first) => c.issue(
                    &ukey,
                    format!(
                        "{u} is already listed at {first}: each upstream belongs to one side, once"
                    ),
                ),
                None => upstreams.push(u),
            }
        }
        EnvironmentConfig { upstreams }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
preview_listen = "127.0.0.1:8081"

[admin]
listen = "127.0.0.1:9901"
token_env = "BLUEGREEN_TOKEN"

[state]
dir = ".bluegreen"

[health]
path = "/healthz"
interval = "1s"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 3

[environments.blue]
upstreams = ["127.0.0.1:9001", "127.0.0.1:9003"]

[environments.green]
upstreams = ["127.0.0.1:9002"]

[switch]
drain_timeout = "30s"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/bg"))
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn example_config_is_valid() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.environments.blue.upstreams.len(), 2);
        assert_eq!(
            cfg.environments[Side::Green].upstreams,
            vec!["127.0.0.1:9002"]
        );
        assert_eq!(cfg.health.interval, Duration::from_secs(1));
        assert_eq!(cfg.switch.drain_timeout, Duration::from_secs(30));
        assert_eq!(cfg.state.dir, PathBuf::from("/etc/bg/.bluegreen"));
        assert_eq!(cfg.proxy.balance, Balance::RoundRobin);
        assert_eq!(cfg.switch.initial_live, Side::Blue);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = GOOD.replace("[switch]", "[switch]\ndrian_timeout = \"1s\"");
        let msg = problems(&text);
        assert!(msg.contains("test.toml"), "{msg}");
        assert!(msg.contains("drian_timeout"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn every_unknown_key_is_reported_with_the_other_problems() {
        let text = GOOD
            .replace("[switch]", "[switch]\ndrian_timeout = \"1s\"")
            .replace(
                "[proxy]",
                "[deploy.hooks]\ndeploy = \"x\"\ndeploi = \"y\"\n\n[proxy]",
            )
            .replace("[health]", "[health]\npaht = \"/x\"")
            .replace("interval = \"1s\"", "interval = \"9223372036854775807s\"");
        let err = parse(&text).unwrap_err();
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"switch.drian_timeout"), "{err}");
        assert!(keys.contains(&"health.paht"), "{err}");
        assert!(keys.contains(&"deploy.hooks.deploi"), "{err}");
        assert!(keys.contains(&"health.interval"), "{err}");
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn upstreams_that_loop_repeat_or_cannot_be_reached_are_refused() {
        let cases = [
            // One of our own listeners, by address, by localhost.
            ("127.0.0.1:8080", "own proxy.listen"),
            ("localhost:8081", "own proxy.preview_listen"),
            ("127.0.0.1:9901", "own admin.listen"),
            // The same upstream under two names.
            ("localhost:9001", "already listed"),
            ("127.0.0.1:0", "port 0"),
        ];
        for (extra, want) in cases {
            let text = GOOD.replace(
                "\"127.0.0.1:9003\"]",
                &format!("\"127.0.0.1:9003\", \"{extra}\"]"),
            );
            let msg = problems(&text);
            assert!(msg.contains(want), "{extra}: {msg}");
        }
        let many: Vec<String> = (0..65)
            .map(|i| format!("\"127.0.0.1:{}\"", 20000 + i))
            .collect();
        let text = GOOD.replace(
            "[\"127.0.0.1:9001\", \"127.0.0.1:9003\"]",
            &format!("[{}]", many.join(", ")),
        );
        assert!(problems(&text).contains("at most 64 per side"));
        let text = GOOD
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"")
            .replace("[\"127.0.0.1:9002\"]", "[\"127.0.0.1:8080\"]");
        assert!(problems(&text).contains("own proxy.listen"));
    }

    #[test]
    fn bad_values_are_all_reported_with_keys() {
        let text = GOOD
            .replace("\"127.0.0.1:8080\"", "\"localhost:80:80\"")
            .replace("interval = \"1s\"", "interval = \"1 fortnight\"")
            .replace("[\"127.0.0.1:9002\"]", "[]")
            .replace("healthy_threshold = 2", "healthy_threshold = 0");
        let err = parse(&text).unwrap_err();
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"proxy.listen"), "{err}");
        assert!(keys.contains(&"health.interval"), "{err}");
        assert!(keys.contains(&"environments.green.upstreams"), "{err}");
        assert!(keys.contains(&"health.healthy_threshold"), "{err}");
    }

    #[test]
    fn missing_and_unknown_sides_are_rejected() {
        let text = GOOD.replace("[environments.green]", "[environments.purple]");
        let msg = problems(&text);
        assert!(
            msg.contains("environments.purple: unknown environment"),
            "{msg}"
        );
        assert!(msg.contains("environments.green: missing"), "{msg}");
    }

    #[test]
    fn upstream_shared_by_both_sides_is_rejected() {
        let text = GOOD.replace("[\"127.0.0.1:9002\"]", "[\"127.0.0.1:9001\"]");
        let msg = problems(&text);
        assert!(msg.contains("environments.green.upstreams[0]"), "{msg}");
        assert!(
            msg.contains("already listed at environments.blue.upstreams[0]"),
            "{msg}"
        );
    }

    #[test]
    fn zero_duration_and_bad_upstream_are_rejected() {
        let text = GOOD
            .replace("drain_timeout = \"30s\"", "drain_timeout = \"0s\"")
            .replace("\"127.0.0.1:9003\"", "\"no port here\"");
        let msg = problems(&text);
        assert!(
            msg.contains("switch.drain_timeout: duration \"0s\" must be greater than zero"),
            "{msg}"
        );
        assert!(
            msg.contains("environments.blue.upstreams[1]: invalid upstream"),
            "{msg}"
        );
    }

    #[test]
    fn admin_off_loopback_needs_explicit_opt_in() {
        let text = GOOD.replace("listen = \"127.0.0.1:9901\"", "listen = \"0.0.0.0:9901\"");
        assert!(problems(&text).contains("admin.allow_remote"));
        let text = text.replace("token_env", "allow_remote = true\ntoken_env");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn hostnames_are_valid_upstreams() {
        let text = GOOD.replace("\"127.0.0.1:9003\"", "\"app-2.internal:9003\"");
        assert!(parse(&text).is_ok());
    }

    const DEPLOY: &str = r#"
[deploy]
deploy_timeout = "30s"

[deploy.supervisor]
run = "./releases/{version}/app --port {port}"

[[deploy.smoke]]
name = "home"
path = "/"
expect_body_contains = "{version}"

[[deploy.smoke]]
name = "script"
command = "sh -c 'curl -fsS {preview_url}/healthz'"

[deploy.bake]
duration = "30s"
interval = "5s"
max_error_rate = 0.05
p99_ratio = 1.5
"#;

    #[test]
    fn deploy_section_is_parsed() {
        let cfg = parse(&format!("{GOOD}{DEPLOY}")).unwrap();
        let d = cfg.deploy.unwrap();
        assert_eq!(d.smoke.len(), 2);
        assert_eq!(d.bake.thresholds.max_error_rate, 0.05);
        assert_eq!(d.bake.thresholds.p99_ratio, Some(1.5));
        assert_eq!(d.deploy_timeout, Duration::from_secs(30));
        let deploy::DeployMethod::Supervisor(s) = d.method else {
            panic!()
        };
        assert_eq!(
            s.run.render(&[("version", "v2"), ("port", "9002")]),
            vec!["./releases/v2/app", "--port", "9002"]
        );
    }

    #[test]
    fn deploy_mistakes_are_caught_before_anything_runs() {
        let text = format!("{GOOD}{DEPLOY}")
            .replace("--port {port}", "--port {port} --tag {verison}")
            .replace("path = \"/\"\n", "")
            .replace("max_error_rate = 0.05", "max_error_rate = 5")
            .replace("p99_ratio = 1.5", "p99_ratio = 0.5");
        let msg = problems(&text);
        assert!(
            msg.contains("deploy.supervisor.run: unknown placeholder {verison}"),
            "{msg}"
        );
        assert!(msg.contains("deploy.smoke[0]: needs a path"), "{msg}");
        assert!(
            msg.contains("deploy.bake.max_error_rate: 5 is out of range"),
            "{msg}"
        );
        assert!(
            msg.contains("deploy.bake.p99_ratio: 0.5 is out of range"),
            "{msg}"
        );
    }

    #[test]
    fn missing_hook_program_is_named() {
        let text =
            format!("{GOOD}\n[deploy]\n[deploy.hooks]\ndeploy = \"./no-such-hook.sh {{env}}\"\n");
        let msg = problems(&text);
        assert!(
            msg.contains("deploy.hooks.deploy: program \"./no-such-hook.sh\" does not exist"),
            "{msg}"
        );
        let text =
            format!("{GOOD}\n[deploy]\n[deploy.hooks]\ndeploy = \"true {{env}} {{version}}\"\n");
        assert!(parse(&text).is_ok(), "a program on PATH is found");
    }
}
