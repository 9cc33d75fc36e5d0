//! `forward`: a request's way from the client's head to the upstream's
//! answer, in numbered steps, each its own function.

use super::body::{InFlight, ResponseBody};
use super::error::ProxyError;
use super::prepare::{prepare_taps, Prepared};
use super::respond::{authority_value, respond};
use super::send::{send, SendError};
use super::{rewrite, ConnCtx, Route, UpstreamBody};
use crate::client_body::{ClientBody, Upload};
use crate::plane::clients::ListenerKind;
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

/// What `forward` hands back besides the answer, and a held request's turn.
pub struct Out<'a> {
    /// The record of this request, when it is being recorded.
    pub record: &'a mut Option<Recorded>,
    /// The client's upload, to leave its time out of the app's.
    pub upload: &'a mut Option<Arc<Upload>>,
    /// Time spent in upstreams' queues, also not the app's.
    pub queued: &'a mut std::time::Duration,
    /// A released request's turn: passed on once it has its place.
    pub baton: Option<super::hold::Baton>,
}

/// Forwards one request to an upstream of its route's side.
pub async fn forward(
    req: Request<Incoming>,
    conn: &ConnCtx,
    route: &Route,
    started: Instant,
    out: Out<'_>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Out {
        record,
        upload,
        queued,
        baton,
    } = out;
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

    // 4. Copies for the taps, taken as the client sent the request. A
    // held request's turn is not kept while its client uploads (the next
    // held ones would wait on the client's pace).
    let shadow = route.shadow.clone().filter(|_| on_upgrade.is_none());
    let baton = baton.filter(|_| route.recorder.is_none() && shadow.is_none());
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
        &conn.plane,
        (preview, host_from_upstream),
        &mut body_sent,
        (queued, baton),
    )
    .await?;

    // 7. The answer goes back, streamed; an upgrade becomes a tunnel.
    let upstream = guard.upstream().clone();
    let tee = tee
        .take()
        .map(|(s, m)| Tee::new(s, m, &resp, upstream, route.pool.side, started.elapsed()));
    let upgrade = on_upgrade.zip(head.upgrade);
    let mut answer = respond(
        resp,
        sender,
        guard,
        upgrade,
        route.pool.clone(),
        &conn.plane,
        tee,
    )?;
    // `proxy.side_header`: which side served, for debugging (the app's own
    // header of that name is replaced, never passed on beside ours).
    if route.settings.side_header {
        answer
            .headers_mut()
            .insert(X_BLUEGREEN_SIDE.clone(), side_value(route.pool.side));
    }
    Ok(answer)
}

/// The response header of `proxy.side_header`.
pub static X_BLUEGREEN_SIDE: http::HeaderName = http::HeaderName::from_static("x-bluegreen-side");

fn side_value(side: bluegreen_core::Side) -> http::HeaderValue {
    http::HeaderValue::from_static(side.as_str())
}

/// Picks an upstream and sends, and sends again where that is safe:
/// - a connect failure sent nothing, so the very same request (head,
///   extensions and body untouched) goes to another upstream of the side, up
///   to `retries` times; one that refused is marked down;
/// - an idempotent request (RFC 9110 §9.2.2) whose body is in memory, sent
///   and then met by a close or reset before any response head, goes once
///   more: to another upstream, or the same one when it has no other (nginx's
///   `proxy_next_upstream error`, HAProxy's `retry-on empty-response`);
/// - nothing else is sent twice: not a request whose body was streamed, not
///   a POST or PATCH, not after a timeout or a malformed answer.
///
/// Requests an upstream took and did not answer count towards marking it
/// down (passive health).
///
/// Each attempt first takes a place at its upstream (`upstream_max_requests`),
/// waiting in its queue when all are taken; a released held request passes
/// its turn on once its request is handed to a connection (or it failed).
async fn send_with_retries(
    mut req: Request<UpstreamBody>,
    route: &Route,
    plane: &crate::plane::Plane,
    (preview, host_from_upstream): (bool, bool),
    body_sent: &mut super::send::BodySent,
    (queued, mut baton): (&mut std::time::Duration, Option<super::hold::Baton>),
) -> Result<(Response<Incoming>, crate::upstream::conn::Sender, InFlight), ProxyError> {
    let (pool, settings) = (&route.pool, &route.settings);
    let limits = (settings.connect_timeout, settings.upstream_timeout);
    let mut tried: crate::upstream::pool::Tried = 0;
    let mut attempt = 0;
    let mut last_refused = None;
    // Taken before the first send, which consumes the request.
    let mut replay = if settings.retries > 0 {
        Replay::of(&req)
    } else {
        None
    };
    let mut same_again = None;
    loop {
        let Some(idx) = pool.pick(tried, !preview).or(same_again.take()) else {
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
        let slot = match upstream.try_slot() {
            Some(took) => Ok((took, std::time::Duration::ZERO)),
            // Boxed: the queue is the rare path, and its future would
            // otherwise make every request's future larger.
            None => {
                Box::pin(upstream.queue_for_slot(settings.queue_timeout, settings.max_queue)).await
            }
        };
        let guard = match slot {
            Ok((took, waited)) => {
                *queued += waited;
                guard.holding_slot(took)
            }
            Err(why) => {
                return Err(ProxyError::Queue {
                    upstream: upstream.address.clone(),
                    side: pool.side,
                    why,
                })
            }
        };
        let failed = |reason| (upstream.address.clone(), pool.side, reason);
        let health_flipped = |h: Option<bluegreen_core::health::Health>, reason: &str| {
            if let Some(h) = h {
                plane.events.emit(crate::events::Event::Health {
                    side: pool.side,
                    upstream: upstream.address.clone(),
                    health: h,
                    reason: upstream.last_error(),
                });
                tracing::warn!(side = %pool.side, upstream = %upstream.address, %reason, "upstream marked unhealthy by failed requests");
            }
        };
        match send(&upstream, req, limits, body_sent, &mut baton).await {
            Ok((resp, sender)) => {
                upstream.answered(resp.status().as_u16());
                return Ok((resp, sender, guard));
            }
            Err(e @ (SendError::Connect(..) | SendError::Closed(..))) => {
                // Nothing was sent: the request comes back and may go to the
                // next upstream. One that refused or could not be reached is
                // down until its checks pass; one that took the connection
                // and closed it (at its limit, shutting down) counts towards
                // passive marking.
                let (reason, back, refused) = match e {
                    SendError::Connect(reason, back) => (reason, back, true),
                    SendError::Closed(reason, back) => (reason, back, false),
                    _ => unreachable!("matched above"),
                };
                if refused {
                    upstream.failed();
                    health_flipped(upstream.mark_down(reason.clone()), &reason);
                } else {
                    health_flipped(upstream.failed_request(&reason), &reason);
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
            Err(SendError::Empty(reason)) => {
                health_flipped(upstream.failed_request(&reason), &reason);
                let again = replay.take().filter(|_| attempt < settings.retries);
                let Some(again) = again else {
                    let (upstream, side, reason) = failed(reason);
                    return Err(ProxyError::Upstream {
                        upstream,
                        side,
                        reason,
                    });
                };
                tracing::debug!(side = %pool.side, upstream = %upstream.address, %reason, "an idempotent request got no answer: sent once more");
                // If no upstream is left to try, this is the answer.
                let (up, side, why) = failed(reason);
                last_refused = Some(ProxyError::Upstream {
                    upstream: up,
                    side,
                    reason: why,
                });
                attempt += 1;
                req = again.into_request();
                if upstream.routable() {
                    same_again = Some(idx);
                }
            }
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
                let reason = format!("no response head within {:?}", settings.upstream_timeout);
                health_flipped(upstream.failed_request(&reason), &reason);
                return Err(ProxyError::Timeout {
                    upstream: upstream.address.clone(),
                    side: pool.side,
                    after: settings.upstream_timeout,
                });
            }
        }
    }
}

/// A copy of a request that may be sent again after its upstream closed
/// without answering: idempotent, with its body in memory (empty, or read
/// whole for a tap). A streamed body is gone once sent, so it never is.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Full<Bytes>,
}

impl Replay {
    fn of(req: &Request<UpstreamBody>) -> Option<Replay> {
        if !req.method().is_idempotent() {
            return None;
        }
        let Either::Right(body) = req.body() else {
            return None;
        };
        Some(Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body: body.clone(),
        })
    }

    fn into_request(self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(self.body));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}
