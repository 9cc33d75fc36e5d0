//! `[state]` and `[state.etcd]`: where the state lives. The file store
//! needs nothing installed; etcd shares the state between router nodes.

use super::checker::Checker;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where state is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// This node's own files (state for the file store; the process table,
    /// app logs and recordings for every backend).
    pub dir: PathBuf,
    /// Shared with other router nodes, when set.
    pub etcd: Option<EtcdConfig>,
}

/// `[state.etcd]`: several router nodes share one desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// Every key of this service lives under it (one service per prefix).
    pub prefix: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    pub tls: Option<EtcdTls>,
    /// How long a switch waits for every node to apply it.
    pub converge_timeout: Duration,
    /// A node (and the deploy lock it holds) that stops renewing its lease
    /// is gone after this long.
    pub lease_ttl: Duration,
    /// A node gone this long is no longer listed as LOST (an operator may
    /// remove it sooner with `bluegreen cluster-forget`).
    pub forget_after: Duration,
    /// How often the node holding the `compact` lock compacts etcd's
    /// history (all of etcd's keyspace, not only the prefix); `None`
    /// (`"off"`) leaves it to etcd's own `--auto-compaction`.
    pub compact_every: Option<Duration>,
    /// Revisions kept behind the current one at each compaction.
    pub keep_revisions: u64,
}

/// TLS to etcd: the CA that signed its certificate, and a client
/// certificate when etcd asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawState {
    dir: Option<String>,
    backend: Option<String>,
    etcd: Option<RawEtcd>,
}

#[derive(Debug, Deserialize)]
struct RawEtcd {
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: Option<String>,
    node: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    tls: Option<RawEtcdTls>,
    converge_timeout: Option<String>,
    lease_ttl: Option<String>,
    forget_after: Option<String>,
    compact_every: Option<String>,
    keep_revisions: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawEtcdTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// `[state]`: the directory, and `[state.etcd]` when `backend = "etcd"`.
pub(super) fn validate(raw: &RawState, base: &Path, c: &mut Checker) -> StateConfig {
    let dir = raw.dir.as_deref().unwrap_or(".bluegreen");
    if dir.is_empty() {
        c.issue("state.dir", "must not be empty");
    }
    let dir = base.join(dir);
    let etcd = match (raw.backend.as_deref(), &raw.etcd) {
        (None | Some("file"), None) => None,
        (None | Some("file"), Some(_)) => {
            c.issue(
                "state.etcd",
                "is set but state.backend is \"file\": add backend = \"etcd\" to [state], or remove [state.etcd]",
            );
            None
        }
        (Some("etcd"), None) => {
            c.issue(
                "state.etcd",
                "backend = \"etcd\" needs a [state.etcd] table with endpoints = [\"http://127.0.0.1:2379\"]",
            );
            None
        }
        (Some("etcd"), Some(e)) => validate_etcd(e, base, c),
        (Some(other), _) => {
            c.issue(
                "state.backend",
                format!("unknown backend {other:?}: expected \"file\" or \"etcd\""),
            );
            None
        }
    };
    StateConfig { dir, etcd }
}

fn validate_etcd(raw: &RawEtcd, base: &Path, c: &mut Checker) -> Option<EtcdConfig> {
    if raw.endpoints.is_empty() {
        c.issue(
            "state.etcd.endpoints",
            "must list at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
        );
    }
    for (i, e) in raw.endpoints.iter().enumerate() {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| {
            let host = r.trim_end_matches('/');
            !host.is_empty() && !host.contains(['/', ' ', '?', '#'])
        });
        if !ok {
            c.issue(
                format!("state.etcd.endpoints[{i}]"),
                format!(
                    "{e:?} is not an endpoint URL: expected http://HOST:PORT or https://HOST:PORT"
                ),
            );
        }
    }
    let prefix = raw
        .prefix
        .clone()
        .unwrap_or_else(|| "/bluegreen/default".into());
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        c.issue(
            "state.etcd.prefix",
            format!("{prefix:?} must start with / and not end with one, e.g. \"/bluegreen/shop\""),
        );
    }
    let node = raw.node.clone().unwrap_or_else(hostname);
    if node.is_empty()
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        c.issue(
            "state.etcd.node",
            format!("{node:?} is not a node name (letters, digits, - _ .)"),
        );
    }
    if raw.password_env.is_some() && raw.username.is_none() {
        c.issue(
            "state.etcd.password_env",
            "is set without state.etcd.username",
        );
    }
    let tls = raw.tls.as_ref().map(|t| {
        if t.cert.is_some() != t.key.is_some() {
            c.issue(
                "state.etcd.tls",
                "cert and key go together: set both or neither",
            );
        }
        EtcdTls {
            ca: t
                .ca
                .as_deref()
                .and_then(|p| c.pem_file("state.etcd.tls.ca", base, p)),
            cert: t
                .cert
                .as_deref()
                .and_then(|p| c.pem_file("state.etcd.tls.cert", base, p)),
            key: t
                .key
                .as_deref()
                .and_then(|p| c.file("state.etcd.tls.key", base, p)),
        }
    });
    let converge_timeout = c.duration(
        "state.etcd.converge_timeout",
        raw.converge_timeout.as_deref(),
        Duration::from_secs(5),
    );
    let lease_ttl = c.duration(
        "state.etcd.lease_ttl",
        raw.lease_ttl.as_deref(),
        Duration::from_secs(5),
    );
    if lease_ttl < Duration::from_secs(2) {
        c.issue(
            "state.etcd.lease_ttl",
            "must be at least 2s (etcd's shortest lease)",
        );
    }
    let forget_after = c.duration(
        "state.etcd.forget_after",
        raw.forget_after.as_deref(),
        Duration::from_secs(24 * 3600),
    );
    let compact_every = match raw.compact_every.as_deref() {
        Some("off") => None,
        raw => Some(c.duration("state.etcd.compact_every", raw, Duration::from_secs(5 * 60))),
    };
    let keep_revisions = c.int(
        "state.etcd.keep_revisions",
        raw.keep_revisions,
        1000,
        1,
        100_000_000,
    ) as u64;
    Some(EtcdConfig {
        endpoints: raw.endpoints.clone(),
        prefix,
        node,
        username: raw.username.clone(),
        password_env: raw.password_env.clone(),
        tls,
        converge_timeout,
        lease_ttl,
        forget_after,
        compact_every,
        keep_revisions,
    })
}

/// The machine's name, the default node name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}
