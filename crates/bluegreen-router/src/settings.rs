//! Request-path settings: every limit and switch the request path reads,
//! in one value, so a later config reload can replace them together.

use bluegreen_core::config::ProxyConfig;
use std::net::IpAddr;
use std::time::Duration;

/// What the request path needs to know from `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// Counted from when the request (body included) has been sent.
    pub upstream_timeout: Duration,
    pub retries: u32,
    pub access_log: bool,
    pub client_body_timeout: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ProxySettings {
    /// The settings of a validated `[proxy]` table.
    pub fn from_config(p: &ProxyConfig) -> ProxySettings {
        ProxySettings {
            connect_timeout: p.connect_timeout,
            upstream_timeout: p.upstream_timeout,
            retries: p.retries,
            access_log: p.access_log,
            client_body_timeout: p.client_body_timeout,
            trusted_proxies: p.trusted_proxies.clone(),
        }
    }

    /// True when `peer`'s forwarding headers are believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_addresses_and_networks_including_mapped_v4() {
        let s = ProxySettings {
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(1),
            retries: 1,
            access_log: false,
            client_body_timeout: Duration::from_secs(1),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        assert!(s.trusts("10.1.2.3".parse().unwrap()));
        assert!(s.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(s.trusts("::1".parse().unwrap()));
        assert!(!s.trusts("11.0.0.1".parse().unwrap()));
        assert!(!s.trusts("127.0.0.1".parse().unwrap()));
    }
}
