//! `tls.redirect_http`: the plain listener sends every request to the same
//! URL on HTTPS with a 308, which keeps the method and body.

use super::body::ResponseBody;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

/// `308 Permanent Redirect` to `https://HOST[:PORT]/path?query`. The host
/// follows the same rules as a forwarded request's (one valid `Host`, or the
/// target's authority, which wins): anything else is a 400, never a
/// redirect somewhere the client did not name.
pub fn to_https<B>(req: &Request<B>, port: u16) -> Response<ResponseBody> {
    let mut parts = http::Request::builder()
        .method(req.method())
        .uri(req.uri())
        .version(req.version())
        .body(())
        .map(|r| r.into_parts().0)
        .ok();
    if let Some(p) = parts.as_mut() {
        p.headers = req.headers().clone();
    }
    let host = parts
        .as_mut()
        .and_then(|p| super::rewrite::inspect(p).ok())
        .and_then(|head| head.host)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        return ResponseBody::plain(
            StatusCode::BAD_REQUEST,
            "400: no valid host to redirect to\n".into(),
        );
    };
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host.as_str(),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = match port {
        443 => format!("https://{name}{path}"),
        p => format!("https://{name}:{p}{path}"),
    };
    let Ok(location) = HeaderValue::from_str(&target) else {
        return ResponseBody::plain(
            StatusCode::BAD_REQUEST,
            "400: no valid host to redirect to\n".into(),
        );
    };
    let mut resp = ResponseBody::plain(
        StatusCode::PERMANENT_REDIRECT,
        format!("308: use {target}\n"),
    );
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, target: &str, port: u16) -> (u16, Option<String>) {
        let req = Request::get(target).header("host", host).body(()).unwrap();
        let resp = to_https(&req, port);
        let loc = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (resp.status().as_u16(), loc)
    }

    #[test]
    fn the_same_url_on_https_keeping_path_and_query() {
        assert_eq!(
            location("shop.example:8080", "/a/b?x=1", 443),
            (308, Some("https://shop.example/a/b?x=1".into()))
        );
        assert_eq!(
            location("shop.example", "/", 8443),
            (308, Some("https://shop.example:8443/".into()))
        );
        assert_eq!(
            location("[::1]:80", "/v6", 443),
            (308, Some("https://[::1]/v6".into()))
        );
        // The target's authority wins; a host that is not one is refused.
        assert_eq!(
            location("other.example", "http://shop.example/x", 443),
            (308, Some("https://shop.example/x".into()))
        );
        assert_eq!(location("good.example@evil.example", "/", 443), (400, None));
        assert_eq!(location("a.example/evil", "/", 443), (400, None));
    }
}
