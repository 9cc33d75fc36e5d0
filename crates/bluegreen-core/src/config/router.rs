//! `[router]`: which router carries live traffic. bluegreen's own proxy
//! (`builtin`, the default), or one the user already runs that bluegreen
//! drives at each switch (`nginx`: an include file it writes, checked with
//! `nginx -t`, reloaded, and confirmed before the switch counts; `haproxy`:
//! a map file whose entry picks the backend, changed through the runtime
//! API in one atomic commit and written to disk so a reload keeps it).

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
    Haproxy(HaproxyConfig),
    Kubernetes(KubernetesConfig),
    Alb(AlbConfig),
}

/// `[router.kubernetes]`: a Service whose `spec.selector` names the live
/// side (`LABEL: blue|green`). This version only prints the requests it
/// would send (`dry_run = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// The API server's base URL.
    pub api: String,
    pub namespace: String,
    pub service: String,
    /// The selector's key whose value is the side's name.
    pub label: String,
    /// The bearer token's file (never printed).
    pub token_file: PathBuf,
}

/// `[router.alb]`: an AWS Application Load Balancer listener whose default
/// action forwards to the live side's target group. This version only
/// prints the requests it would send (`dry_run = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlbConfig {
    pub region: String,
    pub listener_arn: String,
    pub blue_target_group: String,
    pub green_target_group: String,
}

/// `[router.haproxy]`: the user's HAProxy, driven through one map file
/// whose `live` entry names the backend its frontend uses
/// (`use_backend %[str(live),map(MAP)]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxyConfig {
    /// The runtime API (`stats socket PATH level admin`).
    pub socket: PathBuf,
    /// The main config file, checked with `haproxy -c -f`.
    pub config: PathBuf,
    /// The map file bluegreen writes (`live NAME_green`, `idle NAME_blue`),
    /// an absolute path, as the user's config names it: the runtime API
    /// knows it by that name.
    pub map: PathBuf,
    /// The backends are `BACKEND_blue` and `BACKEND_green`.
    pub backend: String,
    /// The haproxy program.
    pub binary: String,
    /// How long one runtime API command or `haproxy -c` may take.
    pub timeout: Duration,
}

impl HaproxyConfig {
    /// The backend that carries `side`.
    pub fn backend_of(&self, side: crate::Side) -> String {
        format!("{}_{side}", self.backend)
    }
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
    haproxy: Option<RawHaproxy>,
    kubernetes: Option<RawKubernetes>,
    alb: Option<RawAlb>,
}

#[derive(Debug, Deserialize)]
struct RawKubernetes {
    api: Option<String>,
    namespace: Option<String>,
    service: Option<String>,
    label: Option<String>,
    token_file: Option<String>,
    dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawAlb {
    region: Option<String>,
    listener_arn: Option<String>,
    blue_target_group: Option<String>,
    green_target_group: Option<String>,
    dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawHaproxy {
    socket: Option<String>,
    config: Option<String>,
    map: Option<String>,
    backend: Option<String>,
    binary: Option<String>,
    timeout: Option<String>,
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
    let kind = raw.kind.as_deref().unwrap_or("builtin");
    for (table, name, given) in [
        ("router.nginx", "nginx", raw.nginx.is_some()),
        ("router.haproxy", "haproxy", raw.haproxy.is_some()),
        ("router.kubernetes", "kubernetes", raw.kubernetes.is_some()),
        ("router.alb", "alb", raw.alb.is_some()),
    ] {
        if given && kind != name {
            c.issue(
                table,
                format!("is used only with router.kind = \"{name}\" (the kind is {kind:?})"),
            );
        }
    }
    match kind {
        "builtin" => RouterKind::Builtin,
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
        "haproxy" => match &raw.haproxy {
            Some(h) => haproxy(h, base, c).map_or(RouterKind::Builtin, RouterKind::Haproxy),
            None => {
                c.issue(
                    "router.haproxy",
                    "is required with router.kind = \"haproxy\" (socket, config, map, backend)",
                );
                RouterKind::Builtin
            }
        },
        "kubernetes" => match &raw.kubernetes {
            Some(k) => kubernetes(k, base, c).map_or(RouterKind::Builtin, RouterKind::Kubernetes),
            None => {
                c.issue(
                    "router.kubernetes",
                    "is required with router.kind = \"kubernetes\" (service, dry_run = true)",
                );
                RouterKind::Builtin
            }
        },
        "alb" => match &raw.alb {
            Some(a) => alb(a, c).map_or(RouterKind::Builtin, RouterKind::Alb),
            None => {
                c.issue(
                    "router.alb",
                    "is required with router.kind = \"alb\" (region, listener_arn, blue_target_group, green_target_group, dry_run = true)",
                );
                RouterKind::Builtin
            }
        },
        other => {
            c.issue(
                "router.kind",
                format!("unknown router {other:?}: \"builtin\", \"nginx\", \"haproxy\", \"kubernetes\" or \"alb\""),
            );
            RouterKind::Builtin
        }
    }
}

/// `dry_run` must be said, and true: this version sends nothing.
fn dry_run(c: &mut Checker, table: &str, given: Option<bool>) {
    if given != Some(true) {
        c.issue(
            format!("{table}.dry_run"),
            "must be true: this version prints the requests it would send at each switch and sends nothing (bluegreen's own proxy switches)",
        );
    }
}

/// A DNS-1123 label (namespaces, label values) or name.
fn k8s_name(c: &mut Checker, key: &str, v: &str) {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !v.starts_with(['-', '.'])
        && !v.ends_with(['-', '.']);
    if !ok {
        c.issue(
            key,
            format!("{v:?} is not a Kubernetes name (lowercase letters, digits, - and .)"),
        );
    }
}

fn kubernetes(k: &RawKubernetes, base: &Path, c: &mut Checker) -> Option<KubernetesConfig> {
    dry_run(c, "router.kubernetes", k.dry_run);
    let api = k
        .api
        .clone()
        .unwrap_or_else(|| "https://kubernetes.default.svc".into());
    if !api.starts_with("https://") && !api.starts_with("http://") {
        c.issue(
            "router.kubernetes.api",
            format!("{api:?} is not a URL (https://HOST[:PORT])"),
        );
    }
    let namespace = k.namespace.clone().unwrap_or_else(|| "default".into());
    k8s_name(c, "router.kubernetes.namespace", &namespace);
    let service = match &k.service {
        Some(s) => {
            k8s_name(c, "router.kubernetes.service", s);
            Some(s.clone())
        }
        None => {
            c.issue(
                "router.kubernetes.service",
                "is required with router.kind = \"kubernetes\"",
            );
            None
        }
    };
    let label = k.label.clone().unwrap_or_else(|| "slot".into());
    let label_ok = !label.is_empty()
        && label.len() <= 316
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if !label_ok {
        c.issue(
            "router.kubernetes.label",
            format!("{label:?} is not a label key ([prefix/]name)"),
        );
    }
    Some(KubernetesConfig {
        api: api.trim_end_matches('/').to_string(),
        namespace,
        service: service?,
        label,
        token_file: base.join(
            k.token_file
                .as_deref()
                .unwrap_or("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ),
    })
}

fn alb(a: &RawAlb, c: &mut Checker) -> Option<AlbConfig> {
    dry_run(c, "router.alb", a.dry_run);
    let region = match &a.region {
        Some(r)
            if !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Some(r.clone())
        }
        Some(r) => {
            c.issue(
                "router.alb.region",
                format!("{r:?} is not an AWS region (e.g. \"eu-west-1\")"),
            );
            None
        }
        None => {
            c.issue(
                "router.alb.region",
                "is required with router.kind = \"alb\"",
            );
            None
        }
    };
    let mut arn = |key: &str, v: &Option<String>, kind: &str| match v {
        Some(v)
            if v.starts_with("arn:")
                && v.contains(":elasticloadbalancing:")
                && v.contains(&format!(":{kind}/")) =>
        {
            Some(v.clone())
        }
        Some(v) => {
            c.issue(key, format!("{v:?} is not an ELB {kind} ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:{kind}/...)"));
            None
        }
        None => {
            c.issue(key, "is required with router.kind = \"alb\"");
            None
        }
    };
    let listener_arn = arn("router.alb.listener_arn", &a.listener_arn, "listener");
    let blue = arn(
        "router.alb.blue_target_group",
        &a.blue_target_group,
        "targetgroup",
    );
    let green = arn(
        "router.alb.green_target_group",
        &a.green_target_group,
        "targetgroup",
    );
    Some(AlbConfig {
        region: region?,
        listener_arn: listener_arn?,
        blue_target_group: blue?,
        green_target_group: green?,
    })
}

fn haproxy(h: &RawHaproxy, base: &Path, c: &mut Checker) -> Option<HaproxyConfig> {
    let required = |c: &mut Checker, key: &str, v: &Option<String>| match v {
        Some(v) if !v.is_empty() => Some(v.clone()),
        _ => {
            c.issue(key, "is required with router.kind = \"haproxy\"");
            None
        }
    };
    let socket = required(c, "router.haproxy.socket", &h.socket).map(|f| base.join(f));
    let config = required(c, "router.haproxy.config", &h.config)
        .and_then(|f| c.file("router.haproxy.config", base, &f));
    let map = required(c, "router.haproxy.map", &h.map).map(PathBuf::from);
    if let Some(m) = &map {
        let text = m.display().to_string();
        if !m.is_absolute() {
            c.issue(
                "router.haproxy.map",
                format!("{text:?} is relative: give the absolute path, the one your haproxy.cfg names (HAProxy opens a relative one from its own directory)"),
            );
        } else if text.contains(|ch: char| ch.is_whitespace() || ch == ';') {
            c.issue(
                "router.haproxy.map",
                format!(
                    "{text:?}: a path with spaces or ';' cannot be named to HAProxy's runtime API"
                ),
            );
        } else if m.is_dir() {
            c.issue(
                "router.haproxy.map",
                format!(
                    "{} is a directory: name the file bluegreen writes",
                    m.display()
                ),
            );
        } else if !m.parent().is_some_and(Path::is_dir) {
            c.issue(
                "router.haproxy.map",
                format!("{}: its directory does not exist", m.display()),
            );
        }
        if config.as_deref() == Some(m.as_path()) {
            c.issue(
                "router.haproxy.map",
                "must not be the main config: bluegreen rewrites it at each switch",
            );
        }
    }
    let backend = required(c, "router.haproxy.backend", &h.backend);
    if let Some(b) = &backend {
        if !b
            .bytes()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'-' | b'.' | b':'))
        {
            c.issue(
                "router.haproxy.backend",
                format!("{b:?} is not a HAProxy backend name (letters, digits, _ - . :)"),
            );
        }
    }
    let timeout = c.duration(
        "router.haproxy.timeout",
        h.timeout.as_deref(),
        Duration::from_secs(5),
    );
    Some(HaproxyConfig {
        socket: socket?,
        config: config?,
        map: map?,
        backend: backend?,
        binary: h.binary.clone().unwrap_or_else(|| "haproxy".into()),
        timeout,
    })
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
