//! The one place where a failure on the request path becomes an HTTP status:
//! upstream trouble is 502/504, no usable upstream is 503, a request we cannot
//! forward is 400, our own bugs are 500.

use crate::client_body::ClientBodyError;
use crate::request::body::ResponseBody;
use bluegreen_core::Side;
use http::{header, HeaderValue, Response, StatusCode};
use std::time::Duration;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy upstream in the {side} side ({role})")]
    NoUpstream { side: Side, role: &'static str },
    #[error("could not connect to upstream {upstream} ({side}): {reason}")]
    Connect {
        upstream: String,
        side: Side,
        reason: String,
    },
    #[error("upstream {upstream} ({side}) sent no response within {after:?}")]
    Timeout {
        upstream: String,
        side: Side,
        after: Duration,
    },
    #[error("upstream {upstream} ({side}) failed: {reason}")]
    Upstream {
        upstream: String,
        side: Side,
        reason: String,
    },
    /// Every place at the upstream was taken and its queue was full, or
    /// the request waited its whole queue timeout.
    #[error("upstream {upstream} ({side}) is at its limit of requests: {why}")]
    Queue {
        upstream: String,
        side: Side,
        why: crate::upstream::pool::QueueRefusal,
    },
    #[error("request cannot be forwarded: {0}")]
    BadRequest(&'static str),
    /// The client's body broke or stalled: the client's fault, never the upstream's.
    #[error(transparent)]
    ClientBody(#[from] ClientBodyError),
    #[error("{0} is not supported: this is a reverse proxy, not a forward proxy")]
    MethodNotAllowed(&'static str),
}

impl ProxyError {
    /// Status code for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoUpstream { .. } | ProxyError::Queue { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody(ClientBodyError::Broken(_)) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody(ClientBodyError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Short machine-readable code, sent as `X-Bluegreen-Error`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoUpstream { .. } => "no_healthy_upstream",
            ProxyError::Queue {
                why: crate::upstream::pool::QueueRefusal::Full(_),
                ..
            } => "upstream_queue_full",
            ProxyError::Queue { .. } => "upstream_queue_timeout",
            ProxyError::Connect { .. } => "upstream_connect",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::Upstream { .. } => "upstream_error",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientBody(ClientBodyError::Broken(_)) => "client_body_error",
            ProxyError::ClientBody(ClientBodyError::Stalled(_)) => "client_body_timeout",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// True when the client caused it: logged quietly, never the app's failure.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) | ProxyError::MethodNotAllowed(_)
        )
    }

    /// The response the client gets. The body names the side but not upstream
    /// addresses, which stay in the router's log.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let text = match &self {
            ProxyError::NoUpstream { side, role } => {
                format!("{status}: no healthy upstream in the {side} side ({role})\n")
            }
            ProxyError::Connect { side, .. } => {
                format!("{status}: could not connect to an upstream of the {side} side\n")
            }
            ProxyError::Timeout { side, after, .. } => format!(
                "{status}: the {side} side sent no response within {}\n",
                humantime::format_duration(*after)
            ),
            ProxyError::Upstream { side, .. } => {
                format!("{status}: the {side} side failed to answer\n")
            }
            ProxyError::Queue { side, why, .. } => match why {
                crate::upstream::pool::QueueRefusal::Full(n) => format!(
                    "{status}: the {side} side is busy ({n} requests already wait); retry shortly\n"
                ),
                crate::upstream::pool::QueueRefusal::TimedOut(d) => format!(
                    "{status}: the {side} side is busy; this request waited {} ms; retry shortly\n",
                    d.as_millis()
                ),
            },
            ProxyError::BadRequest(why) => format!("{status}: {why}\n"),
            ProxyError::ClientBody(e) => format!("{status}: {e}\n"),
            ProxyError::MethodNotAllowed(_) => format!("{status}: {self}\n"),
        };
        let mut resp = ResponseBody::plain(status, text);
        let h = resp.headers_mut();
        h.insert("x-bluegreen-error", HeaderValue::from_static(self.code()));
        if let ProxyError::Queue { .. } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::MethodNotAllowed(_) = self {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
            );
        }
        if self.is_client_fault() {
            // The connection may hold the rest of a body we did not read.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_its_status() {
        let cases = [
            (
                ProxyError::NoUpstream {
                    side: Side::Green,
                    role: "preview",
                },
                503,
            ),
            (
                ProxyError::Connect {
                    upstream: "a".into(),
                    side: Side::Blue,
                    reason: "refused".into(),
                },
                502,
            ),
            (
                ProxyError::Timeout {
                    upstream: "a".into(),
                    side: Side::Blue,
                    after: Duration::from_secs(1),
                },
                504,
            ),
            (ProxyError::BadRequest("no path"), 400),
            (ClientBodyError::Broken("bad chunk".into()).into(), 400),
            (ClientBodyError::Stalled(Duration::from_secs(1)).into(), 408),
            (ProxyError::MethodNotAllowed("CONNECT"), 405),
        ];
        for (err, status) in cases {
            assert_eq!(err.into_response().status().as_u16(), status);
        }
    }

    #[test]
    fn preview_503_body_says_why() {
        let resp = ProxyError::NoUpstream {
            side: Side::Green,
            role: "preview",
        }
        .into_response();
        assert_eq!(resp.headers()["x-bluegreen-error"], "no_healthy_upstream");
    }
}
