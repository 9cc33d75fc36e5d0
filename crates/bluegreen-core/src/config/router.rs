//! `[router]`: which router carries live traffic. bluegreen's own proxy
//! (`builtin`, the default), or one the user already runs that bluegreen
//! drives at each switch (`nginx`: an include file it writes, checked with
//! `nginx -t`, reloaded, and confirmed before the switch counts).

use super::Checker;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The router that carries live traffic.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RouterKind {
    #[default]
    Builtin,
    Nginx(NginxConfig),
}

/// `[router.nginx]`: the user's nginx, driven through one include file.
#[derive(Debug, Clone, PartialEq)]
pub struct NginxConfig {
    /// The main config file: `nginx -t -c` checks it whole, `nginx -s
    /// reload -c` reloads the master its `pid` directive names.
    pub config: PathBuf,
    /// The file bluegreen writes (and the user's `http {}` includes): the
    /// live side's upstream block, the probe server, the preview server.
    pub include: PathBuf,
    /// The name of the upstream block the user's `proxy_pass` points at.
    pub upstream: String,
    /// A loopback server block bluegreen writes to confirm a switch: it
    /// passes to the same upstream and names the upstream that answered.
    pub probe_listen: SocketAddr,
    /// A server block for the idle side (smoke tests, previews).
    pub preview_listen: Option<SocketAddr>,
    /// The nginx program.
    pub binary: String,
    /// How long a switch waits for nginx to serve the new side.
    pub reload_timeout: Duration,
    /// nginx's JSON access log (`log_format bluegreen`), followed so the
    /// bake and the canary judge nginx's traffic.
    pub access_log: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawRouter {
    kind: Option<String>,
    nginx: Option<RawNginx>,
}

#[derive(Debug, Deserialize)]
struct RawNginx {
    config: Option<String>,
    include: Option<String>,
    upstream: Option<String>,
    probe_listen: Option<String>,
    preview_listen: Option<String>,
    binary: Option<String>,
    reload_timeout: Option<String>,
    access_log: Option<String>,
}

/// `[router]`, with the addresses bluegreen already listens on (`ours`).
pub(super) fn validate(
    raw: &RawRouter,
    base: &Path,
    ours: &[(&str, SocketAddr)],
    c: &mut Checker,
) -> RouterKind {
    match raw.kind.as_deref().unwrap_or("builtin") {
        "builtin" => {
            if raw.nginx.is_some() {
                c.issue(
                    "router.nginx",
                    "is used only with router.kind = \"nginx\" (the kind is \"builtin\")",
                );
            }
            RouterKind::Builtin
        }
        "nginx" => match &raw.nginx {
            Some(n) => nginx(n, base, ours, c).map_or(RouterKind::Builtin, RouterKind::Nginx),
            None => {
                c.issue(
                    "router.nginx",
                    "is required with router.kind = \"nginx\" (config, include, upstream, probe_listen)",
                );
                RouterKind::Builtin
            }
        },
        k @ ("haproxy" | "kubernetes" | "alb") => {
            c.issue(
                "router.kind",
                format!("{k:?} is not supported by this version yet: \"builtin\" or \"nginx\""),
            );
            RouterKind::Builtin
        }
        other => {
            c.issue(
                "router.kind",
                format!("unknown router {other:?}: \"builtin\" or \"nginx\""),
            );
            RouterKind::Builtin
        }
    }
}

fn nginx(
    n: &RawNginx,
    base: &Path,
    ours: &[(&str, SocketAddr)],
    c: &mut Checker,
) -> Option<NginxConfig> {
    let required = |c: &mut Checker, key: &str, v: &Option<String>| match v {
        Some(v) if !v.is_empty() => Some(v.clone()),
        _ => {
            c.issue(key, "is required with router.kind = \"nginx\"");
            None
        }
    };
    let config = required(c, "router.nginx.config", &n.config)
        .and_then(|f| c.file("router.nginx.config", base, &f));
    let include = required(c, "router.nginx.include", &n.include).map(|f| base.join(f));
    if let Some(i) = &include {
        match i.parent() {
            Some(_) if i.is_dir() => c.issue(
                "router.nginx.include",
                format!(
                    "{} is a directory: name the file bluegreen writes",
                    i.display()
                ),
            ),
            Some(dir) if dir.is_dir() => {}
            _ => c.issue(
                "router.nginx.include",
                format!("{}: its directory does not exist", i.display()),
            ),
        }
        let same = |a: &Path, b: &Path| {
            a == b
                || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
        };
        if config.as_deref().is_some_and(|f| same(f, i)) {
            c.issue(
                "router.nginx.include",
                "must not be the main config: bluegreen rewrites it at each switch",
            );
        }
    }
    let upstream = required(c, "router.nginx.upstream", &n.upstream);
    if let Some(u) = &upstream {
        if !u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            c.issue(
                "router.nginx.upstream",
                format!("{u:?} is not an nginx upstream name (letters, digits, _)"),
            );
        }
    }
    // nginx listens there: not a port of bluegreen's own, not port 0.
    let listen = |c: &mut Checker, key: &str, raw: &str| -> Option<SocketAddr> {
        let addr = c.addr(key, raw)?;
        if addr.port() == 0 {
            c.issue(
                key,
                format!("{addr}: nginx needs a port of its own here, not 0"),
            );
        }
        if let Some((other, _)) = ours.iter().find(|(_, l)| *l == addr) {
            c.issue(key, format!("{addr} is already used by {other}"));
        }
        Some(addr)
    };
    let probe_listen = required(c, "router.nginx.probe_listen", &n.probe_listen)
        .and_then(|a| listen(c, "router.nginx.probe_listen", &a));
    if let Some(addr) = probe_listen.filter(|a| !a.ip().is_loopback()) {
        c.issue(
            "router.nginx.probe_listen",
            format!("{addr} is not a loopback address: it is for bluegreen's own probes"),
        );
    }
    let preview_listen = n
        .preview_listen
        .as_deref()
        .and_then(|a| listen(c, "router.nginx.preview_listen", a));
    if let (Some(a), Some(b)) = (probe_listen, preview_listen) {
        if a == b {
            c.issue(
                "router.nginx.preview_listen",
                format!("{a} is already used by router.nginx.probe_listen"),
            );
        }
    }
    let reload_timeout = c.duration(
        "router.nginx.reload_timeout",
        n.reload_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let access_log = n.access_log.as_deref().map(|f| base.join(f));
    if let Some(a) = &access_log {
        if !a.parent().is_some_and(Path::is_dir) {
            c.issue(
                "router.nginx.access_log",
                format!("{}: its directory does not exist", a.display()),
            );
        }
    }
    Some(NginxConfig {
        access_log,
        config: config?,
        include: include?,
        upstream: upstream?,
        probe_listen: probe_listen?,
        preview_listen,
        binary: n.binary.clone().unwrap_or_else(|| "nginx".into()),
        reload_timeout,
    })
}
