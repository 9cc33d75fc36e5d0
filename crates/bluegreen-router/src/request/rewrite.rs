//! The client's request head made into the upstream's: first the checks a
//! proxy owes the app (RFC 9112 §3.2 on `Host`, no `CONNECT`, no h2c
//! upgrade), then the documented rewrites. Everything here is a pure
//! function of the head, so each rule has a unit test.

use crate::request::error::ProxyError;
use crate::request::headers::{self, RequestIds};
use crate::settings::ProxySettings;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Uri, Version};

/// What the rest of the request path needs from the client's head.
#[derive(Debug)]
pub struct Head {
    /// The target in origin form (`/path?query`), as the client sent it.
    pub path: PathAndQuery,
    /// The host the client asked for: the target's authority, else `Host`.
    pub host: Option<HeaderValue>,
    /// The protocols of an `Upgrade` the client asked for (h2c never counts).
    pub upgrade: Option<HeaderValue>,
}

/// Checks the head and finds its target and host; the request is refused
/// (400/405) when a proxy must not forward it.
pub fn inspect(parts: &mut Parts) -> Result<Head, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    let host = host(parts)?;
    // One lookup for the common request, which asks for no upgrade.
    let upgrade =
        if parts.version == Version::HTTP_11 && parts.headers.contains_key(header::UPGRADE) {
            drop_h2c(&mut parts.headers);
            headers::wants_upgrade(&parts.headers)
                .then(|| parts.headers.get(header::UPGRADE).cloned())
                .flatten()
        } else {
            None
        };
    let path = match parts.uri.path_and_query() {
        Some(p) => p.clone(),
        None if parts.uri.authority().is_some() => PathAndQuery::from_static("/"),
        None => return Err(ProxyError::BadRequest("the request has no target")),
    };
    Ok(Head {
        path,
        host,
        upgrade,
    })
}

/// The host of a request. An absolute-form target (and HTTP/2's
/// `:authority`) wins over `Host` (RFC 9112 §3.2.2); HTTP/1.1 needs exactly
/// one valid `Host` otherwise (§3.2); HTTP/1.0 may have none.
fn host(parts: &Parts) -> Result<Option<HeaderValue>, ProxyError> {
    let mut fields = parts.headers.get_all(header::HOST).iter();
    let (field, second) = (fields.next(), fields.next());
    if parts.version != Version::HTTP_2 && second.is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest(
                "the request target carries user information",
            ));
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("the request target's host is invalid"));
    }
    match field {
        Some(v) if v.is_empty() || valid_host(v) => Ok(Some(v.clone())),
        Some(_) => Err(ProxyError::BadRequest("the Host header is invalid")),
        None if parts.version == Version::HTTP_11 || parts.version == Version::HTTP_2 => {
            Err(ProxyError::BadRequest("the request has no Host header"))
        }
        None => Ok(None),
    }
}

/// `host[:port]` (RFC 3986): a reg-name or IPv4 of unreserved, sub-delims
/// and `%` characters, or a bracketed IPv6 literal; the port, when there is
/// a colon, digits only (possibly none) and at most 65535. No user
/// information, no path. A byte loop: this runs on every request.
fn valid_host(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    let (host_end, rest) = if b.first() == Some(&b'[') {
        match b.iter().position(|&c| c == b']') {
            Some(i)
                if i > 1
                    && b[1..i]
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || b":.".contains(c)) =>
            {
                (i + 1, &b[i + 1..])
            }
            _ => return false,
        }
    } else {
        let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        let ok = end > 0
            && b[..end]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&c));
        if !ok {
            return false;
        }
        (end, &b[end..])
    };
    let _ = host_end;
    match rest {
        [] => true,
        [b':', port @ ..] => {
            port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && (port.is_empty()
                    || std::str::from_utf8(port)
                        .ok()
                        .and_then(|p| p.parse::<u16>().ok())
                        .is_some())
        }
        _ => false,
    }
}

/// An `Upgrade: h2c` is never forwarded (h2c smuggling: the upstream would
/// speak HTTP/2 on a connection we think is HTTP/1.1). Other protocols in
/// the same header are kept.
fn drop_h2c(headers: &mut HeaderMap) {
    let Some(v) = headers.get(header::UPGRADE) else {
        return;
    };
    let Ok(s) = v.to_str() else { return };
    if !s.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")) {
        return;
    }
    let rest: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    match HeaderValue::from_str(&rest.join(", ")) {
        Ok(v) if !rest.is_empty() => {
            headers.insert(header::UPGRADE, v);
        }
        _ => {
            headers.remove(header::UPGRADE);
        }
    }
}

/// The documented rewrites: our own headers and hop-by-hop headers out,
/// forwarding headers and a request id in, `Host` from the target, target
/// in origin form, HTTP/1.1 to the upstream, HTTP/2 cookies joined.
pub fn rewrite(
    parts: &mut Parts,
    head: &Head,
    conn: &super::ConnCtx,
    trusted: Option<&ProxySettings>,
) {
    rewrite_for(
        parts,
        head,
        &conn.peer_ip,
        conn.edge.https,
        trusted,
        &conn.plane.ids,
    )
}

/// [`rewrite`] with the connection's facts spelled out (for tests).
pub fn rewrite_for(
    parts: &mut Parts,
    head: &Head,
    peer_ip: &HeaderValue,
    https: bool,
    trusted: Option<&ProxySettings>,
    ids: &RequestIds,
) {
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // One pass over the names decides everything below; a plain request
    // (no hop-by-hop, forwarding or own headers) is then only inserts.
    let found = headers::scan_names(&parts.headers);
    headers::strip_found(&mut parts.headers, &found, head.upgrade.is_some());
    // The Host field changes only for an absolute-form target or HTTP/2's
    // `:authority`, or when `Connection` named it.
    let from_target = parts.uri.authority().is_some();
    if let (Some(h), true) = (&head.host, from_target || found.connection) {
        parts.headers.insert(header::HOST, h.clone());
    }
    headers::set_forwarded(
        &mut parts.headers,
        peer_ip,
        if https { "https" } else { "http" },
        trusted,
        head.host.clone(),
        found.forwarding,
    );
    ids.ensure_known(&mut parts.headers, found.request_id);
    if from_target || parts.uri.scheme().is_some() {
        parts.uri = Uri::from(head.path.clone());
    }
    parts.version = Version::HTTP_11;
}

/// True when a `101` answer switches to a protocol the client asked for.
pub fn upgrade_matches(asked: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let (Ok(asked), Some(Ok(answered))) = (asked.to_str(), answered.map(|a| a.to_str())) else {
        return false;
    };
    let name = |p: &str| p.trim().to_ascii_lowercase();
    let asked: Vec<String> = asked.split(',').map(name).collect();
    answered
        .split(',')
        .map(name)
        .all(|p| !p.is_empty() && p != "h2c" && asked.contains(&p))
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, method: &str, target: &str, hdrs: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (k, v) in hdrs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn refused(p: &mut Parts) -> String {
        match inspect(p) {
            Err(e) => format!("{} {e}", e.status().as_u16()),
            Ok(h) => panic!("accepted: {h:?}"),
        }
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        let v11 = Version::HTTP_11;
        let two = &[("host", "a.example"), ("host", "b.example")];
        assert!(refused(&mut parts(v11, "GET", "/", two)).contains("more than one Host"));
        assert!(refused(&mut parts(v11, "GET", "/", &[])).contains("no Host"));
        for bad in [
            "a b",
            "a.example/x",
            "user@a.example",
            "a.example:port",
            "[::1",
        ] {
            let e = refused(&mut parts(v11, "GET", "/", &[("host", bad)]));
            assert!(e.starts_with("400"), "{bad:?}: {e}");
        }
        for good in [
            "a.example",
            "a.example:8080",
            "a.example:",
            "127.0.0.1:1",
            "[::1]:80",
            "",
        ] {
            let h = inspect(&mut parts(v11, "GET", "/x", &[("host", good)])).unwrap();
            assert_eq!(h.host.unwrap(), good);
        }
        // HTTP/1.0 may leave Host out.
        let h = inspect(&mut parts(Version::HTTP_10, "GET", "/", &[])).unwrap();
        assert!(h.host.is_none());
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let mut p = parts(
            Version::HTTP_11,
            "GET",
            "http://target.example:81/p?q=1",
            &[("host", "other.example")],
        );
        let head = inspect(&mut p).unwrap();
        assert_eq!(head.host.as_ref().unwrap(), "target.example:81");
        assert_eq!(head.path.as_str(), "/p?q=1");
        rewrite_for(
            &mut p,
            &head,
            &HeaderValue::from_static("127.0.0.1"),
            false,
            None,
            &RequestIds::new(),
        );
        assert_eq!(p.uri, "/p?q=1");
        assert_eq!(p.headers["host"], "target.example:81");
        assert_eq!(p.headers["x-forwarded-host"], "target.example:81");
        let mut p = parts(Version::HTTP_11, "GET", "http://u@target.example/", &[]);
        assert!(refused(&mut p).contains("user information"));
    }

    #[test]
    fn connect_is_405() {
        let mut p = parts(
            Version::HTTP_11,
            "CONNECT",
            "a.example:443",
            &[("host", "a.example:443")],
        );
        assert!(refused(&mut p).starts_with("405"));
    }

    #[test]
    fn h2c_upgrades_are_never_forwarded() {
        let mut p = parts(
            Version::HTTP_11,
            "GET",
            "/",
            &[
                ("host", "a"),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        );
        let head = inspect(&mut p).unwrap();
        assert!(head.upgrade.is_none());
        rewrite_for(
            &mut p,
            &head,
            &HeaderValue::from_static("127.0.0.1"),
            false,
            None,
            &RequestIds::new(),
        );
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(!p.headers.contains_key(gone), "{gone}: {:?}", p.headers);
        }
        let mut p = parts(
            Version::HTTP_11,
            "GET",
            "/ws",
            &[
                ("host", "a"),
                ("connection", "upgrade"),
                ("upgrade", "h2c, websocket"),
            ],
        );
        let head = inspect(&mut p).unwrap();
        assert_eq!(head.upgrade.unwrap(), "websocket");
    }

    #[test]
    fn a_101_must_name_a_protocol_the_client_asked_for() {
        let asked = HeaderValue::from_static("websocket");
        assert!(upgrade_matches(
            &asked,
            Some(&HeaderValue::from_static("WebSocket"))
        ));
        assert!(!upgrade_matches(
            &asked,
            Some(&HeaderValue::from_static("h2c"))
        ));
        assert!(!upgrade_matches(
            &asked,
            Some(&HeaderValue::from_static("tls/1.3"))
        ));
        assert!(!upgrade_matches(&asked, None));
    }

    #[test]
    fn our_headers_and_hop_by_hop_are_removed_and_cookies_joined_for_h2() {
        let mut p = parts(
            Version::HTTP_2,
            "GET",
            "http://a.example/x",
            &[
                ("x-bluegreen-shadow", "1"),
                ("te", "trailers"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
        );
        let head = inspect(&mut p).unwrap();
        rewrite_for(
            &mut p,
            &head,
            &HeaderValue::from_static("10.0.0.1"),
            false,
            None,
            &RequestIds::new(),
        );
        assert_eq!(p.version, Version::HTTP_11);
        assert_eq!(p.headers["cookie"], "a=1; b=2");
        assert!(!p.headers.contains_key("x-bluegreen-shadow"));
        assert!(!p.headers.contains_key("te"));
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.1");
    }
}
