//! `tls.redirect_http`: the plain listener sends every request to the same
//! URL on HTTPS with a 308, which keeps the method and body.

use super::body::ResponseBody;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

/// `308 Permanent Redirect` to `https://HOST[:PORT]/path?query`.
pub fn to_https<B>(req: &Request<B>, port: u16) -> Response<ResponseBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = match port {
        443 => format!("https://{name}{path}"),
        p => format!("https://{name}:{p}{path}"),
    };
    let mut resp = Response::new(ResponseBody::text(format!("308: use {target}\n")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&target) {
        Ok(v) if !name.is_empty() => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        _ => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
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
    }
}
