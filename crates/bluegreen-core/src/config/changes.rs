//! What a reload would change: what can be applied live (through the
//! routing snapshot and the pipeline's settings) and what needs a new
//! process (`bluegreen upgrade`), each named by its key.

use super::Config;
use crate::side::Side;

/// The differences between a running config and a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    /// Applied by a reload, e.g. `environments.blue.upstreams: +127.0.0.1:9003 -127.0.0.1:9001`.
    pub applied: Vec<String>,
    /// Kept as they are until `bluegreen upgrade` (listen addresses, the
    /// state dir, the admin API, ...).
    pub needs_upgrade: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.needs_upgrade.is_empty()
    }
}

/// Compares two validated configs key by key.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();
    let mut live = |key: &str, changed: bool| {
        if changed {
            c.applied.push(key.to_string());
        }
    };
    let (o, n) = (&old.proxy, &new.proxy);
    live("proxy.balance", o.balance != n.balance);
    live(
        "proxy.connect_timeout",
        o.connect_timeout != n.connect_timeout,
    );
    live(
        "proxy.upstream_timeout",
        o.upstream_timeout != n.upstream_timeout,
    );
    live("proxy.retries", o.retries != n.retries);
    live(
        "proxy.upstream_max_requests",
        o.upstream_max_requests != n.upstream_max_requests,
    );
    live(
        "proxy.upstream_max_queue",
        o.upstream_max_queue != n.upstream_max_queue,
    );
    live(
        "proxy.upstream_queue_timeout",
        o.upstream_queue_timeout != n.upstream_queue_timeout,
    );
    live(
        "proxy.client_body_timeout",
        o.client_body_timeout != n.client_body_timeout,
    );
    live(
        "proxy.trusted_proxies",
        o.trusted_proxies != n.trusted_proxies,
    );
    live("proxy.access_log", o.access_log != n.access_log);
    live("proxy.side_header", o.side_header != n.side_header);
    live("proxy.sticky_header", o.sticky_header != n.sticky_header);
    live("proxy.sticky_cookie", o.sticky_cookie != n.sticky_cookie);
    live("health", old.health != new.health);
    live(
        "switch.drain_timeout",
        old.switch.drain_timeout != new.switch.drain_timeout,
    );
    live("shadow", old.shadow != new.shadow);
    live("sessions", old.sessions != new.sessions);
    live("notify", old.notify != new.notify);
    // Deploy settings other than the method (which needs an upgrade).
    let deploy_changed = match (&old.deploy, &new.deploy) {
        (Some(o), Some(n)) => {
            let mut n = n.clone();
            n.method = o.method.clone();
            *o != n
        }
        _ => false,
    };
    live("deploy", deploy_changed);
    live(
        "tls.certificates",
        old.tls.as_ref().map(|t| &t.certificates) != new.tls.as_ref().map(|t| &t.certificates),
    );
    for side in Side::ALL {
        let (o, n) = (&old.environments[side], &new.environments[side]);
        if o.upstreams != n.upstreams {
            let added: Vec<String> = n
                .upstreams
                .iter()
                .filter(|u| !o.upstreams.contains(u))
                .map(|u| format!("+{u}"))
                .collect();
            let removed: Vec<String> = o
                .upstreams
                .iter()
                .filter(|u| !n.upstreams.contains(u))
                .map(|u| format!("-{u}"))
                .collect();
            let what = [added, removed].concat();
            c.applied.push(if what.is_empty() {
                format!("environments.{side}.upstreams: reordered")
            } else {
                format!("environments.{side}.upstreams: {}", what.join(" "))
            });
        }
        if o.tls != n.tls {
            c.applied.push(format!("environments.{side}.tls"));
        }
    }

    let mut upgrade = |key: &str, changed: bool| {
        if changed {
            c.needs_upgrade.push(key.to_string());
        }
    };
    upgrade("proxy.listen", o.listen != n.listen);
    upgrade("proxy.preview_listen", o.preview_listen != n.preview_listen);
    upgrade("proxy.idle_timeout", o.idle_timeout != n.idle_timeout);
    upgrade(
        "proxy.max_header_bytes",
        o.max_header_bytes != n.max_header_bytes,
    );
    upgrade(
        "proxy.max_connections",
        o.max_connections != n.max_connections,
    );
    upgrade("proxy.workers", o.workers != n.workers);
    upgrade("admin", old.admin != new.admin);
    upgrade("state", old.state != new.state);
    upgrade("record.dir", old.record != new.record);
    upgrade("router", old.router != new.router);
    upgrade(
        "deploy (added or removed)",
        old.deploy.is_some() != new.deploy.is_some(),
    );
    upgrade(
        "deploy.method",
        matches!((&old.deploy, &new.deploy), (Some(o), Some(n)) if o.method != n.method),
    );
    let tls_rest = |t: &Option<super::TlsConfig>| {
        t.as_ref().map(|t| {
            let mut t = t.clone();
            t.certificates.clear();
            t
        })
    };
    upgrade("tls", tls_rest(&old.tls) != tls_rest(&new.tls));
    c
}

/// The config a reload runs with: `new` where it can change live, `old`
/// everywhere else (those changes wait for `bluegreen upgrade`, and a
/// second reload still reports them).
pub fn applied(old: &Config, new: &Config) -> Config {
    let mut c = new.clone();
    c.proxy.listen = old.proxy.listen;
    c.proxy.preview_listen = old.proxy.preview_listen;
    c.proxy.idle_timeout = old.proxy.idle_timeout;
    c.proxy.max_header_bytes = old.proxy.max_header_bytes;
    c.proxy.max_connections = old.proxy.max_connections;
    c.proxy.workers = old.proxy.workers;
    c.admin = old.admin.clone();
    c.state = old.state.clone();
    c.record = old.record.clone();
    c.deploy = match (&old.deploy, &new.deploy) {
        (Some(o), Some(n)) => {
            let mut n = n.clone();
            n.method = o.method.clone();
            Some(n)
        }
        _ => old.deploy.clone(),
    };
    c.tls = match (&old.tls, &new.tls) {
        (Some(o), Some(n)) => {
            let mut t = o.clone();
            t.certificates = n.certificates.clone();
            Some(t)
        }
        _ => old.tls.clone(),
    };
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "[proxy]\nlisten = \"127.0.0.1:8080\"\n[environments.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[environments.green]\nupstreams = [\"127.0.0.1:9002\"]\n";

    fn parse(text: &str) -> Config {
        Config::parse(text, "t", Path::new("/")).unwrap()
    }

    #[test]
    fn upstreams_and_settings_are_live_listen_addresses_need_an_upgrade() {
        let old = parse(BASE);
        assert!(diff(&old, &old).is_empty());
        let new = parse(
            &BASE
                .replace("8080", "8081")
                .replace(
                    "[\"127.0.0.1:9001\"]",
                    "[\"127.0.0.1:9003\", \"127.0.0.1:9004\"]",
                )
                .replace("[proxy]\n", "[proxy]\nretries = 3\n"),
        );
        let c = diff(&old, &new);
        assert_eq!(
            c.applied,
            vec![
                "proxy.retries".to_string(),
                "environments.blue.upstreams: +127.0.0.1:9003 +127.0.0.1:9004 -127.0.0.1:9001"
                    .to_string()
            ]
        );
        assert_eq!(c.needs_upgrade, vec!["proxy.listen".to_string()]);
        // What runs keeps the old address until an upgrade; a second
        // reload of the same file still names it.
        let running = applied(&old, &new);
        assert_eq!(running.proxy.listen, old.proxy.listen);
        assert_eq!(running.proxy.retries, 3);
        assert!(diff(&old, &running).needs_upgrade.is_empty());
        assert_eq!(
            diff(&running, &new).needs_upgrade,
            vec!["proxy.listen".to_string()]
        );
        assert!(diff(&running, &new).applied.is_empty());
    }
}
