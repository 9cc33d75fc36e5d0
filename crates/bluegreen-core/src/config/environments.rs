//! `[environments.blue]` and `[environments.green]`: each upstream valid,
//! on one side only (under any of its names), never one of our own
//! listeners, at most 64 a side.

use super::checker::Checker;
use super::{EnvironmentConfig, RawEnvironment, RawUpstreamTls, UpstreamTlsConfig};
use crate::side::{Side, Sides};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

/// At most this many upstreams per side (a request's tried set is a `u64`).
pub const MAX_UPSTREAMS: usize = 64;

/// The address an upstream names, for comparisons: `localhost` is
/// 127.0.0.1 (what it resolves to first), and host names compare without
/// case. `[::1]:P` and `127.0.0.1:P` are different sockets.
pub(super) fn canonical_upstream(u: &str) -> String {
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
pub(super) fn reaches(u: &str, listen: SocketAddr) -> bool {
    let Ok(target) = canonical_upstream(u).parse::<SocketAddr>() else {
        return false;
    };
    if target.port() != listen.port() || listen.port() == 0 {
        return false;
    }
    let ip = target.ip();
    ip == listen.ip() || (listen.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
}

pub(super) fn validate_environments(
    raw: &BTreeMap<String, RawEnvironment>,
    ours: &[(&str, SocketAddr)],
    base: &Path,
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
                tls: None,
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
        let tls = env.tls.as_ref().map(|t| upstream_tls(t, &key, base, c));
        EnvironmentConfig { upstreams, tls }
    })
}

/// `[environments.SIDE.tls]`: a name that can be checked, a CA file that
/// holds certificates.
fn upstream_tls(
    raw: &RawUpstreamTls,
    key: &str,
    base: &Path,
    c: &mut Checker,
) -> UpstreamTlsConfig {
    if let Some(name) = &raw.server_name {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
        if !ok {
            c.issue(
                format!("{key}.tls.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
    }
    let ca = raw
        .ca
        .as_ref()
        .and_then(|f| c.pem_file(&format!("{key}.tls.ca"), base, f));
    UpstreamTlsConfig {
        server_name: raw.server_name.clone(),
        ca,
    }
}
