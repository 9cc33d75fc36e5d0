//! Pause and maintenance on the live listener. A pause holds new requests
//! (in-flight ones finish) until `resume` releases them in arrival order, up
//! to a per-request timeout and a queue limit, past which they get `503`
//! with `Retry-After`. Maintenance answers every live request with `503` and
//! a message (plain text, or JSON for clients that ask for it). Neither
//! answer counts against a side: the app never saw the request.

use super::body::ResponseBody;
use bluegreen_core::state::Maintenance;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

pub use crate::snapshot::hold::{Baton, Hold, NotReleased};

/// The `503` of a held request not let through.
pub fn not_released(why: NotReleased, hold: &Hold) -> Response<ResponseBody> {
    let text = match why {
        NotReleased::Full => format!(
            "503: traffic is paused and {} requests are already waiting; retry shortly\n",
            hold.limit
        ),
        NotReleased::TimedOut => format!(
            "503: traffic is paused; this request waited {} ms; retry shortly\n",
            hold.timeout.as_millis()
        ),
    };
    let mut resp = ResponseBody::plain(StatusCode::SERVICE_UNAVAILABLE, text);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp.headers_mut()
        .insert("x-bluegreen-error", HeaderValue::from_static("paused"));
    resp
}

/// The maintenance page: the message as text, or as JSON when the client's
/// `Accept` asks for JSON before text.
pub fn maintenance<B>(req: &Request<B>, m: &Maintenance) -> Response<ResponseBody> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = accept.contains("application/json") && !accept.starts_with("text/");
    let mut resp = if json {
        let body = serde_json::json!({
            "error": "maintenance",
            "message": m.message,
            "retry_after": m.retry_after_secs,
        })
        .to_string();
        let mut r = ResponseBody::plain(StatusCode::SERVICE_UNAVAILABLE, body + "\n");
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        ResponseBody::plain(StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", m.message))
    };
    if let Ok(v) = HeaderValue::from_str(&m.retry_after_secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp.headers_mut()
        .insert("x-bluegreen-error", HeaderValue::from_static("maintenance"));
    resp
}
