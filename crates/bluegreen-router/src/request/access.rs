//! The access log line of a request, taken before it is forwarded.

use super::ConnCtx;
use http::{Method, Request, Version};
use hyper::body::Incoming;

/// What the access log says about a request, taken before it is forwarded.
pub struct AccessLine {
    method: Method,
    target: String,
    version: Version,
    request_id: Option<String>,
}

impl AccessLine {
    pub fn of(req: &Request<Incoming>) -> AccessLine {
        AccessLine {
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/".into(), |p| p.as_str().to_string()),
            version: req.version(),
            request_id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }

    pub fn log(
        self,
        conn: &ConnCtx,
        side: bluegreen_core::Side,
        status: u16,
        took: std::time::Duration,
    ) {
        tracing::info!(
            target: "bluegreen::access",
            listener = conn.kind.as_str(),
            client = conn.peer_ip.to_str().unwrap_or("?"),
            method = %self.method,
            target = %self.target,
            version = ?self.version,
            side = %side,
            status,
            duration_ms = took.as_secs_f64() * 1000.0,
            request_id = self.request_id.as_deref().unwrap_or(""),
            "request"
        );
    }
}
