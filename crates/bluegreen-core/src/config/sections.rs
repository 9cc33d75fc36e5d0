//! Validation of the small tables: `[proxy]`, `[admin]`, `[health]`.

use super::checker::Checker;
use super::{
    AdminConfig, Balance, CertificatePair, HealthConfig, ProxyConfig, RawAdmin, RawHealth, RawProxy,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub(super) fn validate_proxy(raw: &RawProxy, c: &mut Checker) -> ProxyConfig {
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
        upstream_max_requests: c.int(
            "proxy.upstream_max_requests",
            raw.upstream_max_requests,
            256,
            0,
            1_000_000,
        ) as usize,
        upstream_max_queue: c.int(
            "proxy.upstream_max_queue",
            raw.upstream_max_queue,
            10_000,
            0,
            10_000_000,
        ) as usize,
        upstream_queue_timeout: c.duration(
            "proxy.upstream_queue_timeout",
            raw.upstream_queue_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        client_body_timeout: c.duration(
            "proxy.client_body_timeout",
            raw.client_body_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        trusted_proxies: trusted_proxies(&raw.trusted_proxies, c),
        access_log: raw.access_log.unwrap_or(false),
        side_header: raw.side_header.unwrap_or(false),
        workers: raw
            .workers
            .map(|w| c.int("proxy.workers", Some(w), 1, 1, 1024) as usize),
        sticky_header: raw.sticky_header.clone().filter(|h| {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                c.issue("proxy.sticky_header", format!("{h:?} is not a header name"));
            }
            ok
        }),
        sticky_cookie: raw.sticky_cookie.clone().filter(|k| {
            let ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b));
            if !ok {
                c.issue("proxy.sticky_cookie", format!("{k:?} is not a cookie name"));
            }
            ok
        }),
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

pub(super) fn validate_admin(raw: &RawAdmin, base: &Path, c: &mut Checker) -> AdminConfig {
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
    let tls = raw.tls.as_ref().and_then(|t| {
        let mut file = |what: &str, f: &str| c.file(&format!("admin.tls.{what}"), base, f);
        let (cert, key) = (file("cert", &t.cert), file("key", &t.key));
        Some(CertificatePair {
            cert: cert?,
            key: key?,
        })
    });
    // The bearer token must not cross a network in clear by accident.
    if !listen.ip().is_loopback()
        && raw.allow_remote == Some(true)
        && raw.tls.is_none()
        && raw.allow_remote_plaintext != Some(true)
    {
        c.issue(
            "admin.tls",
            format!("the admin API listens on {listen}, beyond this host, without TLS: its bearer token would cross the network in clear. Set admin.tls = {{ cert = \"admin.pem\", key = \"admin.key\" }}, or admin.allow_remote_plaintext = true if a tunnel or private network already protects it"),
        );
    }
    AdminConfig {
        listen,
        token_env,
        tls,
    }
}

pub(super) fn validate_health(raw: &RawHealth, c: &mut Checker) -> HealthConfig {
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
