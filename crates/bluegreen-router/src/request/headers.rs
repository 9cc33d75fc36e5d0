//! Proxy manners: hop-by-hop headers, forwarding headers, request ids.

use crate::settings::ProxySettings;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub use crate::plane::ids::{RequestIds, X_REQUEST_ID};

/// What one pass over a request's header names found (the hop-by-hop ones
/// are those of RFC 9110 §7.6.1, plus `HTTP2-Settings` and `Upgrade`): everything the
/// rewrite needs to know, so a request without any of it costs no hashing.
#[derive(Debug, Default)]
pub struct Found {
    /// Present hop-by-hop headers and our own `X-Bluegreen-*` (to remove).
    pub remove: Vec<HeaderName>,
    /// A `Connection` header, whose listed names go too.
    pub connection: bool,
    /// Any forwarding header (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`).
    pub forwarding: bool,
    /// An `X-Request-Id`.
    pub request_id: bool,
}

/// Classifies every header name once (a `match` on the name: length and a
/// compare, no hashing).
pub fn scan_names(headers: &HeaderMap) -> Found {
    let mut found = Found::default();
    let mut last: Option<&HeaderName> = None;
    for name in headers.keys() {
        // Repeated names come one after another; classify each once.
        if last == Some(name) {
            continue;
        }
        last = Some(name);
        match name.as_str() {
            "connection" => {
                found.connection = true;
                found.remove.push(name.clone());
            }
            "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "http2-settings"
            | "upgrade" => found.remove.push(name.clone()),
            "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto" | "x-real-ip"
            | "forwarded" => found.forwarding = true,
            "x-request-id" => found.request_id = true,
            n if n.starts_with("x-bluegreen-") => found.remove.push(name.clone()),
            _ => {}
        }
    }
    found
}

/// Removes what `found` lists and the names `Connection` lists; with
/// `keep_upgrade`, `Upgrade` and `Connection: upgrade` stay for the switch.
pub fn strip_found(headers: &mut HeaderMap, found: &Found, keep_upgrade: bool) {
    if found.remove.is_empty() {
        return;
    }
    if found.connection {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &found.remove {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// True when an HTTP/1.1 request asks to switch protocols (e.g. WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes hop-by-hop headers, including those the `Connection` header names
/// (for answers, and for replayed requests). With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive so the peer sees the switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut found = scan_names(headers);
    // Our own names are a request's business; an answer's are left alone.
    found
        .remove
        .retain(|n| !n.as_str().starts_with("x-bluegreen-"));
    strip_found(headers, &found, keep_upgrade);
}

/// Headers that only a proxy may set: from an untrusted peer they are
/// dropped, never passed on (a client could claim any address).
static FORWARDING: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets the forwarding headers. From a trusted proxy, `X-Forwarded-For` keeps
/// every value it had (all fields, joined in order) and gets the peer
/// appended, and the other forwarding headers are kept when present. From
/// anyone else they are replaced: the peer is the client. `X-Real-IP` names
/// the client: the last address in the chain that is not a trusted proxy.
/// `host` is the host the client asked for.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer_ip: &HeaderValue,
    proto: &'static str,
    trusted: Option<&ProxySettings>,
    host: Option<HeaderValue>,
    any_present: bool,
) {
    let Some(settings) = trusted else {
        if any_present {
            strip_forwarding(headers);
        }
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        headers.insert(X_REAL_IP.clone(), peer_ip.clone());
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        return;
    };
    let mut chain: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(v.as_bytes());
    }
    if !chain.is_empty() {
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer_ip.as_bytes());
    let client = std::str::from_utf8(&chain)
        .ok()
        .and_then(|c| {
            c.rsplit(',')
                .map(str::trim)
                .find(|a| a.parse().map_or(true, |ip| !settings.trusts(ip)))
                .and_then(|a| HeaderValue::from_str(a).ok())
        })
        .unwrap_or_else(|| peer_ip.clone());
    let xff = HeaderValue::from_bytes(&chain).unwrap_or_else(|_| peer_ip.clone());
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_REAL_IP.clone(), client);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let Some(host) = host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
}

/// Drops the forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`).
pub fn strip_forwarding(headers: &mut HeaderMap) {
    for n in &FORWARDING {
        headers.remove(n);
    }
}

/// Drops every `X-Bluegreen-*` header a client sent: those are ours (the
/// shadow and replay paths set them), and a client that forged
/// `X-Bluegreen-Shadow` could make the app skip side effects.
pub fn strip_own(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-bluegreen-"))
        .cloned()
        .collect();
    for k in ours {
        headers.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    fn settings(trusted: &[&str]) -> ProxySettings {
        let mut s = ProxySettings::from_config(
            &bluegreen_core::config::Config::parse(
                "[proxy]\nlisten = \"127.0.0.1:1\"\n[environments.blue]\nupstreams = [\"127.0.0.1:2\"]\n[environments.green]\nupstreams = [\"127.0.0.1:3\"]\n",
                "t",
                std::path::Path::new("/"),
            )
            .unwrap()
            .proxy,
        );
        s.trusted_proxies = trusted
            .iter()
            .map(|t| {
                t.parse()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(Into::into))
                    .unwrap()
            })
            .collect();
        s
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("127.0.0.1"),
            "http",
            None,
            Some(HeaderValue::from_static("example.com")),
            true,
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn a_trusted_proxy_chain_is_kept_whole_and_the_client_found_in_it() {
        let s = settings(&["10.0.0.0/8", "127.0.0.1"]);
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("127.0.0.1"),
            "http",
            Some(&s),
            Some(HeaderValue::from_static("example.com")),
            true,
        );
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.9, 10.0.0.1, 10.0.0.2, 127.0.0.1"
        );
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["forwarded"], "for=203.0.113.9");
    }

    #[test]
    fn our_own_headers_are_stripped_from_clients() {
        let mut h = map(&[
            ("x-bluegreen-shadow", "1"),
            ("X-Bluegreen-Replay", "1"),
            ("x-bluegreenish", "kept"),
        ]);
        strip_own(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bluegreenish"));
    }

    #[test]
    fn request_id_is_added_once_and_unique() {
        let ids = RequestIds::new();
        let mut a = HeaderMap::new();
        let mut b = HeaderMap::new();
        ids.ensure(&mut a);
        ids.ensure(&mut b);
        assert_eq!(a["x-request-id"].len(), 32);
        assert_ne!(a["x-request-id"], b["x-request-id"]);
        let mut c = map(&[("x-request-id", "mine-1.2:3")]);
        ids.ensure(&mut c);
        assert_eq!(c["x-request-id"], "mine-1.2:3");
        let long = "x".repeat(129);
        for bad in [
            &[("x-request-id", "a b")][..],
            &[("x-request-id", "")],
            &[("x-request-id", long.as_str())],
            &[("x-request-id", "a"), ("x-request-id", "b")],
        ] {
            let mut h = map(bad);
            ids.ensure(&mut h);
            assert_eq!(h.get_all("x-request-id").iter().count(), 1, "{bad:?}");
            assert_eq!(h["x-request-id"].len(), 32, "{bad:?} replaced");
        }
    }
}
