//! The request path. One snapshot load decides the side, pool and drain epoch;
//! the request is then forwarded to one upstream of that side and the response
//! streamed back. Nothing here takes a lock.

use crate::body::{InFlight, ResponseBody, TrackedBody};
use crate::conn::{self, Sender};
use crate::control::Router;
use crate::error::ProxyError;
use crate::headers::{self, strip_hop_by_hop, wants_upgrade};
use crate::listener::ListenerKind;
use crate::pool::Upstream;
use crate::pool::{Pool, Tried};
use crate::recorder::Recorder;
use crate::shadow::{Mirror, Shadow, Tee};
use crate::snapshot::Epoch;
use crate::tunnel;
use bluegreen_core::error_chain;
use bluegreen_core::record::Recorded;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

pub use crate::conn::UpstreamBody;

/// What a connection knows about itself, shared by its requests.
pub struct ConnCtx {
    pub router: Arc<Router>,
    pub kind: ListenerKind,
    /// Client IP, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
}

/// Proxies one request; every failure becomes a response here.
pub async fn handle(req: Request<Incoming>, conn: &ConnCtx) -> Response<ResponseBody> {
    let started = Instant::now();
    let preview = conn.kind == ListenerKind::Preview;
    // 1. Load one snapshot; it alone decides where this request goes.
    let (pool, epoch, recorder, shadow) = {
        let snap = conn.router.snapshot.load();
        let side = snap.target(preview);
        let epoch = (!preview).then(|| snap.epochs[side].clone());
        let recorder = match &snap.recorder {
            Some(r) if !preview && r.sample() => Some(r.clone()),
            _ => None,
        };
        let shadow = match &snap.shadow {
            Some(s) if !preview => Some(s.clone()),
            _ => None,
        };
        (snap.pools[side].clone(), epoch, recorder, shadow)
    };
    let access = conn.router.access_log.then(|| AccessLine::of(&req));
    let mut record = None;
    let taps = Taps {
        recorder: recorder.as_deref(),
        record: &mut record,
        shadow,
    };
    let resp = match forward(req, conn, &pool, epoch, started, taps).await {
        Ok(resp) => resp,
        Err(err) => {
            tracing::warn!(listener = conn.kind.as_str(), error = %err, "request failed");
            err.into_response()
        }
    };
    let stats = if preview {
        &pool.preview_stats
    } else {
        &pool.live_stats
    };
    stats.record(resp.status().as_u16(), started.elapsed());
    if let Some(a) = access {
        a.log(conn, pool.side, resp.status().as_u16(), started.elapsed());
    }
    if let (Some(r), Some(mut rec)) = (recorder, record) {
        rec.status = Some(resp.status().as_u16());
        r.submit(rec);
    }
    resp
}

/// What the access log says about a request, taken before it is forwarded.
struct AccessLine {
    method: Method,
    target: String,
    version: Version,
    request_id: Option<String>,
}

impl AccessLine {
    fn of(req: &Request<Incoming>) -> AccessLine {
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

    fn log(
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

/// What, besides the upstream, gets a copy of this request.
struct Taps<'a> {
    recorder: Option<&'a Recorder>,
    record: &'a mut Option<Recorded>,
    shadow: Option<Arc<Shadow>>,
}

async fn forward(
    mut req: Request<Incoming>,
    conn: &ConnCtx,
    pool: &Arc<Pool>,
    epoch: Option<Arc<Epoch>>,
    started: Instant,
    taps: Taps<'_>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Taps {
        recorder,
        record,
        shadow,
    } = taps;
    let router = &conn.router;
    let preview = conn.kind == ListenerKind::Preview;

    // 2. Turn the client's request into the upstream's request head.
    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // Taps need the body whole; only bodies up to their caps are read into memory.
    let shadow = shadow.filter(|s| !upgrade && s.wants(&parts.method, &parts.headers));
    let (body, whole) = if recorder.is_none() && shadow.is_none() {
        if body.is_end_stream() {
            (Either::Right(Full::new(Bytes::new())), None)
        } else {
            (Either::Left(body), None)
        }
    } else {
        let cap = recorder
            .map(|r| r.options.max_body)
            .max(shadow.as_ref().map(|s| s.options.max_request_body))
            .unwrap_or(0);
        buffer(&parts.headers, body, cap).await?
    };
    // Recorded as the client sent it, before any rewriting.
    if let Some(r) = recorder {
        *record = Some(capture(&parts, &path, whole.as_ref(), r));
    }
    let shadow = match shadow {
        Some(s)
            if whole
                .as_ref()
                .is_some_and(|b| b.len() <= s.options.max_request_body) =>
        {
            Some(s)
        }
        Some(s) => {
            s.skip();
            None
        }
        None => None,
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarded(&mut parts.headers, &conn.peer_ip, host);
    router.ids.ensure(&mut parts.headers);
    parts.version = Version::HTTP_11;
    // The copy for the idle side: the request as the upstream sees it.
    let mut mirror = shadow.map(|s| {
        let m = Mirror::new(
            &parts.method,
            &path,
            &parts.headers,
            whole.unwrap_or_default(),
        );
        (s, m)
    });

    // 3. Only idempotent requests without a body can be sent twice.
    let empty = matches!(&body, Either::Right(b) if b.is_end_stream());
    let retryable = router.retries > 0
        && pool.upstreams.len() > 1
        && empty
        && !upgrade
        && is_idempotent(&parts.method);
    let saved = retryable.then(|| (parts.method.clone(), parts.headers.clone()));
    let mut body = Some(body);
    let mut parts = Some(parts);

    // 4. Pick an upstream and send; on a connect failure, try another.
    let deadline = tokio::time::Instant::from_std(started + router.upstream_timeout);
    let mut tried: Tried = 0;
    let mut attempt = 0;
    loop {
        let idx = pool.pick(tried, !preview).ok_or(ProxyError::NoUpstream {
            side: pool.side,
            role: if preview { "preview" } else { "live" },
        })?;
        tried |= 1 << idx;
        let upstream = pool.upstreams[idx].clone();
        let mut head = match parts.take() {
            Some(p) => p,
            None => {
                let (method, headers) = saved.as_ref().expect("retries save the head");
                rebuild_parts(method, headers)
            }
        };
        head.uri = origin_form(head.uri, &path);
        if !head.headers.contains_key(header::HOST) {
            head.headers
                .insert(header::HOST, authority_value(&upstream));
        }
        let outbound = Request::from_parts(
            head,
            body.take()
                .unwrap_or_else(|| Either::Right(Full::new(Bytes::new()))),
        );
        let guard = InFlight::begin(upstream.clone(), epoch.clone());
        match send(&upstream, outbound, router.connect_timeout, deadline).await {
            Ok((resp, sender)) => {
                upstream.answered(resp.status().as_u16());
                let tee = mirror.take().map(|(s, m)| {
                    Tee::new(s, m, &resp, upstream.clone(), pool.side, started.elapsed())
                });
                return respond(resp, sender, guard, on_upgrade, pool.clone(), router, tee);
            }
            Err(SendError::Connect(reason)) => {
                upstream.failed();
                if let Some(h) = upstream.mark_down(reason.clone()) {
                    router.events.emit(
                        "health",
                        serde_json::json!({"side": pool.side, "upstream": upstream.address,
                            "health": h, "reason": reason}),
                    );
                    tracing::warn!(side = %pool.side, upstream = %upstream.address, %reason, "upstream marked unhealthy after a failed connect");
                }
                if retryable && attempt < router.retries {
                    attempt += 1;
                    continue;
                }
                return Err(ProxyError::Connect {
                    upstream: upstream.address.clone(),
                    side: pool.side,
                    reason,
                });
            }
            Err(SendError::Upstream(reason)) => {
                upstream.failed();
                return Err(ProxyError::Upstream {
                    upstream: upstream.address.clone(),
                    side: pool.side,
                    reason,
                });
            }
            Err(SendError::Timeout) => {
                upstream.failed();
                return Err(ProxyError::Timeout {
                    upstream: upstream.address.clone(),
                    side: pool.side,
                    after: router.upstream_timeout,
                });
            }
        }
    }
}

enum SendError {
    /// Nothing was sent: no connection could be opened.
    Connect(String),
    /// Sent, and then the connection failed.
    Upstream(String),
    /// No response head before the deadline.
    Timeout,
}

/// Sends one request to `upstream` (for shadow copies); the error says why.
pub(crate) async fn send_upstream(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    connect_timeout: std::time::Duration,
    deadline: tokio::time::Instant,
) -> Result<(Response<Incoming>, Sender), String> {
    send(upstream, req, connect_timeout, deadline)
        .await
        .map_err(|e| match e {
            SendError::Connect(r) => format!("connect failed: {r}"),
            SendError::Upstream(r) => r,
            SendError::Timeout => "timed out".into(),
        })
}

/// Sends on an idle pooled connection, or a new one. A pooled connection
/// that closed before the request was written hands the request back and
/// the next one is tried, so a stale keep-alive connection never fails a
/// request.
async fn send(
    upstream: &Upstream,
    mut req: Request<UpstreamBody>,
    connect_timeout: std::time::Duration,
    deadline: tokio::time::Instant,
) -> Result<(Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = upstream.conns.take() {
        match tokio::time::timeout_at(deadline, sender.ready()).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(_)) => continue,
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, sender.try_send_request(req)).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Ok(resp)) => return Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(SendError::Upstream(error_chain(e.error()))),
            },
        }
    }
    let mut sender =
        match tokio::time::timeout_at(deadline, conn::connect(&upstream.address, connect_timeout))
            .await
        {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
            Ok(Ok(s)) => s,
        };
    match tokio::time::timeout_at(deadline, sender.send_request(req)).await {
        Err(_) => Err(SendError::Timeout),
        Ok(Ok(resp)) => Ok((resp, sender)),
        Ok(Err(e)) => Err(SendError::Upstream(error_chain(&e))),
    }
}

/// Reads a body whole when it fits `cap` (by Content-Length) and forwards it
/// from memory; a larger one, or one of unknown length, streams on and the
/// taps go without it.
async fn buffer(
    headers: &HeaderMap,
    body: Incoming,
    cap: usize,
) -> Result<(UpstreamBody, Option<Bytes>), ProxyError> {
    if body.is_end_stream() {
        return Ok((Either::Right(Full::new(Bytes::new())), Some(Bytes::new())));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if length.is_some_and(|n| n <= cap) {
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|_| ProxyError::BadRequest("the request body could not be read"))?
            .to_bytes();
        Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
    } else {
        Ok((Either::Left(body), None))
    }
}

/// Builds the record of a request; a body it does not have, or one over the
/// recording's cap, is marked as left out.
fn capture(
    parts: &http::request::Parts,
    path: &PathAndQuery,
    body: Option<&Bytes>,
    r: &Recorder,
) -> Recorded {
    let headers = headers::header_pairs(&parts.headers);
    let now_ms = crate::shadow::now_ms();
    let kept = body.filter(|b| b.len() <= r.options.max_body);
    let mut rec = Recorded::new(
        now_ms,
        parts.method.as_str(),
        path.as_str(),
        headers,
        kept.map_or(&[][..], |b| b),
        &r.options.redact,
    );
    rec.body_omitted = kept.is_none();
    rec
}

/// HTTP/1.1 upstreams get origin-form targets (`/path?query`).
fn origin_form(uri: Uri, path: &PathAndQuery) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        uri
    } else {
        Uri::from(path.clone())
    }
}

fn authority_value(upstream: &Upstream) -> HeaderValue {
    HeaderValue::from_str(upstream.authority.as_str())
        .expect("an authority is a valid header value")
}

/// Turns the upstream's response into the client's, streaming the body.
fn respond(
    mut resp: Response<Incoming>,
    sender: Sender,
    guard: InFlight,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    pool: Arc<Pool>,
    router: &Arc<Router>,
    tee: Option<Box<Tee>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = on_upgrade else {
            return Err(ProxyError::Upstream {
                upstream: guard.upstream().address.clone(),
                side: pool.side,
                reason: "switched protocols without being asked to".into(),
            });
        };
        let upstream_side = hyper::upgrade::on(&mut resp);
        strip_hop_by_hop(resp.headers_mut(), true);
        let shutdown = router.shutdown.clone();
        router.tunnels.spawn(tunnel::run(
            client_side,
            upstream_side,
            guard,
            pool,
            shutdown,
        ));
        return Ok(resp.map(|_| ResponseBody::empty()));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| ResponseBody::Proxied(TrackedBody::new(b, guard, Some(sender), tee))))
}

/// A fresh request head for a retry (the first attempt consumed the original).
fn rebuild_parts(method: &Method, headers: &HeaderMap) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method.clone();
    parts.headers = headers.clone();
    parts.version = Version::HTTP_11;
    parts
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
