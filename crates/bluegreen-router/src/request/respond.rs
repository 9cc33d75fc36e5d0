//! The upstream's answer made into the client's: streamed, hop-by-hop
//! headers out, framing made consistent, and a `101` tunnelled only for a
//! protocol the client asked for.

use super::body::{InFlight, ResponseBody, TrackedBody};
use super::error::ProxyError;
use super::headers::strip_hop_by_hop;
use super::{rewrite, tunnel};
use crate::plane::Plane;
use crate::taps::shadow::Tee;
use crate::upstream::conn::Sender;
use crate::upstream::pool::{Pool, Upstream};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// `Host` for a request that came without one (HTTP/1.0): the upstream's.
pub fn authority_value(upstream: &Upstream) -> HeaderValue {
    HeaderValue::from_str(upstream.authority.as_str())
        .expect("an authority is a valid header value")
}

/// Turns the upstream's response into the client's, streaming the body.
pub fn respond(
    mut resp: Response<Incoming>,
    sender: Sender,
    mut guard: InFlight,
    upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    pool: Arc<Pool>,
    plane: &Arc<Plane>,
    tee: Option<Box<Tee>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let asked_for = |asked: &HeaderValue| {
            rewrite::upgrade_matches(asked, resp.headers().get(header::UPGRADE))
        };
        let client_side = match upgrade {
            Some((client_side, asked)) if asked_for(&asked) => client_side,
            _ => {
                return Err(ProxyError::Upstream {
                    upstream: guard.upstream().address.clone(),
                    side: pool.side,
                    reason: "switched protocols to one the client did not ask for".into(),
                })
            }
        };
        let upstream_side = hyper::upgrade::on(&mut resp);
        strip_hop_by_hop(resp.headers_mut(), true);
        guard.free_slot();
        let shutdown = plane.shutdown.clone();
        plane.tunnels.spawn(tunnel::run(
            client_side,
            upstream_side,
            guard,
            pool,
            shutdown,
        ));
        return Ok(resp.map(|_| ResponseBody::empty()));
    }
    // We speak our own HTTP version to the client (RFC 9110 §6.2): an
    // upstream's HTTP/1.0 must not make a 1.1 client's answer 1.0, nor close
    // its keep-alive connection. hyper answers a 1.0 client in 1.0 anyway,
    // and frames a body without a length (close-delimited upstream) chunked.
    *resp.version_mut() = http::Version::HTTP_11;
    // An upstream that sent both framings is read as chunked (RFC 9112
    // §6.3); its stale length must not reach the client.
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| ResponseBody::Proxied(TrackedBody::new(b, guard, Some(sender), tee))))
}
