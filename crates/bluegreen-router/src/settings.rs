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
    /// An upstream's queue: how many may wait, and for how long.
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub access_log: bool,
    /// Set `X-Bluegreen-Side` on answers from the app.
    pub side_header: bool,
    pub client_body_timeout: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// What keeps a client on one side of a weighted split.
    pub sticky_header: Option<http::HeaderName>,
    pub sticky_cookie: Option<String>,
}

/// The defaults of an empty `[proxy]` table (benches and tests start
/// from these and set what they look at).
impl Default for ProxySettings {
    fn default() -> ProxySettings {
        ProxySettings {
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(30),
            retries: 1,
            max_queue: 10_000,
            queue_timeout: Duration::from_secs(10),
            access_log: false,
            side_header: false,
            client_body_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            sticky_header: None,
            sticky_cookie: None,
        }
    }
}

impl ProxySettings {
    /// The settings of a validated `[proxy]` table.
    pub fn from_config(p: &ProxyConfig) -> ProxySettings {
        ProxySettings {
            connect_timeout: p.connect_timeout,
            upstream_timeout: p.upstream_timeout,
            retries: p.retries,
            max_queue: p.upstream_max_queue,
            queue_timeout: p.upstream_queue_timeout,
            access_log: p.access_log,
            side_header: p.side_header,
            client_body_timeout: p.client_body_timeout,
            trusted_proxies: p.trusted_proxies.clone(),
            sticky_header: p
                .sticky_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            sticky_cookie: p.sticky_cookie.clone(),
        }
    }

    /// The client's place among 10,000 buckets of a weighted split: from
    /// its sticky header, else its sticky cookie, else its address. FNV-1a,
    /// so every node and every restart puts a client in the same bucket.
    pub fn bucket(&self, headers: &http::HeaderMap, peer: IpAddr) -> u16 {
        let from_header = self
            .sticky_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .map(|v| v.as_bytes().to_vec());
        let from_cookie = || {
            let name = self.sticky_cookie.as_deref()?;
            headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then(|| v.as_bytes().to_vec())
                })
        };
        // Behind trusted proxies the client is the last address of the
        // forwarded chain that is not one of them (as for `X-Real-IP`).
        let client = || {
            if !self.trusts(peer) {
                return peer.to_string().into_bytes();
            }
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|a| a.parse::<IpAddr>().map_or(true, |ip| !self.trusts(ip)))
                .last()
                .map(|a| a.as_bytes().to_vec())
                .unwrap_or_else(|| peer.to_string().into_bytes())
        };
        let key = from_header.or_else(from_cookie).unwrap_or_else(client);
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        (h % 10_000) as u16
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

    /// `Default` is what an empty `[proxy]` table gives (compared through
    /// `Debug`: every field shows there).
    #[test]
    fn the_defaults_are_those_of_an_empty_proxy_table() {
        let config = bluegreen_core::config::Config::parse(
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[environments.blue]\nupstreams = [\"127.0.0.1:2\"]\n[environments.green]\nupstreams = [\"127.0.0.1:3\"]\n",
            "t",
            std::path::Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            format!("{:?}", ProxySettings::from_config(&config.proxy)),
            format!("{:?}", ProxySettings::default())
        );
    }

    #[test]
    fn trusts_addresses_and_networks_including_mapped_v4() {
        let s = ProxySettings {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..Default::default()
        };
        assert!(s.trusts("10.1.2.3".parse().unwrap()));
        assert!(s.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(s.trusts("::1".parse().unwrap()));
        assert!(!s.trusts("11.0.0.1".parse().unwrap()));
        // Buckets: by the sticky header, else the cookie, else the address;
        // the same key always lands in the same bucket.
        let s = ProxySettings {
            sticky_header: Some(http::HeaderName::from_static("x-user")),
            sticky_cookie: Some("sid".into()),
            ..s
        };
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = http::HeaderMap::new();
        let by_addr = s.bucket(&h, peer);
        h.insert("cookie", "a=1; sid=abc".parse().unwrap());
        let by_cookie = s.bucket(&h, peer);
        h.insert("x-user", "u-42".parse().unwrap());
        let by_header = s.bucket(&h, peer);
        assert_ne!(by_addr, by_cookie);
        assert_ne!(by_cookie, by_header);
        assert_eq!(by_header, s.bucket(&h, "192.0.2.9".parse().unwrap()));
        assert!(by_header < 10_000);
        // Without a sticky key, behind a trusted proxy: the forwarded client.
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let mut fwd = http::HeaderMap::new();
        fwd.insert("x-forwarded-for", "203.0.113.7, 10.0.0.9".parse().unwrap());
        let direct = s.bucket(&http::HeaderMap::new(), "203.0.113.7".parse().unwrap());
        assert_eq!(
            s.bucket(&fwd, proxy),
            direct,
            "the client behind the proxies"
        );
        assert_eq!(
            s.bucket(&fwd, "198.51.100.1".parse().unwrap()),
            s.bucket(&http::HeaderMap::new(), "198.51.100.1".parse().unwrap()),
            "an untrusted peer's chain is not believed"
        );
        assert!(!s.trusts("127.0.0.1".parse().unwrap()));
    }
}
