//! `forward`: a request's way from the client's head to the upstream's
//! answer, in numbered steps, each its own function.

use super::body::{InFlight, ResponseBody};
use super::client_body::{ClientBody, Upload};
use super::error::ProxyError;
use super::prepare::{prepare_taps, Prepared};
use super::respond::{authority_value, respond};
use super::send::{send, SendError};
use super::{rewrite, ConnCtx, Route, UpstreamBody};
use crate::listener::ListenerKind;
use crate::taps::shadow::Tee;
use bluegreen_core::record::Recorded;
use bytes::Bytes;
use http::header;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

/// Forwards one request to an upstream of its route's side.
pub async fn forward(
    req: Request<Incoming>,
    conn: &ConnCtx,
    route: &Route,
    started: Instant,
    record: &mut Option<Recorded>,
    upload: &mut Option<Arc<Upload>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let settings = &route.settings;
    // 2. Refuse what a proxy must not forward; find the target and host.
    let (mut parts, body) = req.into_parts();
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let head = rewrite::inspect(&mut parts)?;
    let on_upgrade = head.upgrade.as_ref().and(on_upgrade);

    // 3. The client's body, tagged so its failures are the client's.
    let (body, mut body_sent) = if body.is_end_stream() {
        (Either::Right(Full::new(Bytes::new())), None)
    } else {
        let (b, sent, progress) = ClientBody::new(body, settings.client_body_timeout, started);
        *upload = Some(progress.clone());
        (Either::Left(b), Some((sent, progress)))
    };

    // 4. Copies for the taps, taken as the client sent the request.
    let shadow = route.shadow.clone().filter(|_| on_upgrade.is_none());
    let Prepared {
        body,
        whole,
        shadow,
    } = if route.recorder.is_none() && shadow.is_none() {
        // No tap: nothing to buffer, and no future to carry for it.
        Prepared {
            body,
            whole: None,
            shadow: None,
        }
    } else {
        Box::pin(prepare_taps(
            &parts,
            &head.path,
            body,
            route.recorder.as_deref(),
            shadow,
            record,
        ))
        .await?
    };

    // 5. The documented rewrites; the shadow copy is the request as the upstream sees it.
    let trusted = settings.trusts(conn.peer).then_some(&**settings);
    rewrite::rewrite(&mut parts, &head, conn, trusted);
    let mut tee = shadow.map(|s| {
        let m = crate::taps::shadow::Mirror::new(
            &parts.method,
            &head.path,
            &parts.headers,
            whole.unwrap_or_default(),
        );
        (s, m)
    });

    // 6. Pick an upstream and send, retrying on another when connecting fails.
    let req = Request::from_parts(parts, body);
    let preview = conn.kind == ListenerKind::Preview;
    let host_from_upstream = head.host.is_none();
    let (resp, sender, guard) = send_with_retries(
        req,
        route,
        &conn.router,
        preview,
        host_from_upstream,
        &mut body_sent,
    )
    .await?;

    // 7. The answer goes back, streamed; an upgrade becomes a tunnel.
    let upstream = guard.upstream().clone();
    let tee = tee
        .take()
        .map(|(s, m)| Tee::new(s, m, &resp, upstream, route.pool.side, started.elapsed()));
    let upgrade = on_upgrade.zip(head.upgrade);
    respond(
        resp,
        sender,
        guard,
        upgrade,
        route.pool.clone(),
        &conn.router,
        tee,
    )
}

/// Picks an upstream and sends. A connect failure sent nothing, so the very
/// same request (head, extensions and body untouched) goes to another
/// upstream of the side, up to `retries` times; the dead one is marked down.
async fn send_with_retries(
    mut req: Request<UpstreamBody>,
    route: &Route,
    router: &crate::control::Router,
    preview: bool,
    host_from_upstream: bool,
    body_sent: &mut super::send::BodySent,
) -> Result<(Response<Incoming>, crate::upstream::conn::Sender, InFlight), ProxyError> {
    let (pool, settings) = (&route.pool, &route.settings);
    let limits = (settings.connect_timeout, settings.upstream_timeout);
    let mut tried: crate::upstream::pool::Tried = 0;
    let mut attempt = 0;
    let mut last_refused = None;
    loop {
        let Some(idx) = pool.pick(tried, !preview) else {
            return Err(last_refused.unwrap_or(ProxyError::NoUpstream {
                side: pool.side,
                role: if preview { "preview" } else { "live" },
            }));
        };
        tried |= 1 << idx;
        let upstream = pool.upstreams[idx].clone();
        if host_from_upstream {
            req.headers_mut()
                .insert(header::HOST, authority_value(&upstream));
        }
        let guard = InFlight::begin(upstream.clone(), route.epoch.clone());
        let failed = |reason| (upstream.address.clone(), pool.side, reason);
        match send(&upstream, req, limits, body_sent).await {
            Ok((resp, sender)) => {
                upstream.answered(resp.status().as_u16());
                return Ok((resp, sender, guard));
            }
            Err(e @ (SendError::Connect(..) | SendError::Closed(..))) => {
                // Nothing was sent: the request comes back and may go to the
                // next upstream. One that refused or could not be reached is
                // down until its checks pass; one that took the connection
                // and closed it (at its limit, shutting down) is not.
                let (reason, back, refused) = match e {
                    SendError::Connect(reason, back) => (reason, back, true),
                    SendError::Closed(reason, back) => (reason, back, false),
                    _ => unreachable!("matched above"),
                };
                upstream.failed();
                if let Some(h) = refused
                    .then(|| upstream.mark_down(reason.clone()))
                    .flatten()
                {
                    router.events.emit(crate::events::Event::Health {
                        side: pool.side,
                        upstream: upstream.address.clone(),
                        health: h,
                        reason: Some(reason.clone()),
                    });
                    tracing::warn!(side = %pool.side, upstream = %upstream.address, %reason, "upstream marked unhealthy after a failed connect");
                }
                let (upstream, side, reason) = failed(reason);
                let err = ProxyError::Connect {
                    upstream,
                    side,
                    reason,
                };
                if attempt >= settings.retries {
                    return Err(err);
                }
                attempt += 1;
                last_refused = Some(err);
                req = *back;
            }
            Err(SendError::Client(e)) => return Err(ProxyError::ClientBody(e)),
            Err(SendError::Upstream(reason)) => {
                upstream.failed();
                let (upstream, side, reason) = failed(reason);
                return Err(ProxyError::Upstream {
                    upstream,
                    side,
                    reason,
                });
            }
            Err(SendError::Timeout) => {
                upstream.failed();
                return Err(ProxyError::Timeout {
                    upstream: upstream.address.clone(),
                    side: pool.side,
                    after: settings.upstream_timeout,
                });
            }
        }
    }
}
