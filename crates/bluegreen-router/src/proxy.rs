//! The request path. One snapshot load decides the side, pool and drain epoch;
//! the request is then forwarded to one upstream of that side and the response
//! streamed back. Nothing here takes a lock.

use crate::body::{InFlight, ResponseBody, TrackedBody};
use crate::client_body::{ClientBody, ClientBodyError, Upload};
use crate::conn::{self, Sender};
use crate::control::Router;
use crate::error::ProxyError;
use crate::headers::{self, strip_hop_by_hop};
use crate::listener::ListenerKind;
use crate::pool::Upstream;
use crate::pool::{Pool, Tried};
use crate::recorder::Recorder;
use crate::rewrite;
use crate::shadow::{Mirror, Shadow, Tee};
use crate::snapshot::Epoch;
use crate::tunnel;
use bluegreen_core::error_chain;
use bluegreen_core::record::Recorded;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use crate::conn::UpstreamBody;

/// What a connection knows about itself, shared by its requests.
pub struct ConnCtx {
    pub router: Arc<Router>,
    pub kind: ListenerKind,
    /// Client IP, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// The same, to check against `trusted_proxies`.
    pub peer: IpAddr,
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
    let access = conn
        .router
        .settings
        .access_log
        .then(|| AccessLine::of(&req));
    let mut record = None;
    let mut upload = None;
    let taps = Taps {
        recorder: recorder.as_deref(),
        record: &mut record,
        shadow,
    };
    let result = forward(req, conn, &pool, epoch, started, taps, &mut upload).await;
    let client_fault = result.as_ref().is_err_and(ProxyError::is_client_fault);
    let resp = match result {
        Ok(resp) => resp,
        Err(err) if client_fault => {
            tracing::debug!(listener = conn.kind.as_str(), error = %err, "request refused");
            err.into_response()
        }
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
    // What the bake judges is the app's time to answer: a client's own
    // mistakes are counted but not timed, and an upload's own time is left out.
    let took = started.elapsed();
    if client_fault {
        stats.record_untimed(resp.status().as_u16());
    } else {
        let upload_time = upload.as_deref().and_then(Upload::sent_after);
        stats.record(
            resp.status().as_u16(),
            took - upload_time.unwrap_or_default().min(took),
        );
    }
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
    req: Request<Incoming>,
    conn: &ConnCtx,
    pool: &Arc<Pool>,
    epoch: Option<Arc<Epoch>>,
    started: Instant,
    taps: Taps<'_>,
    upload: &mut Option<Arc<Upload>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Taps {
        recorder,
        record,
        shadow,
    } = taps;
    let router = &conn.router;
    let settings = &router.settings;
    let preview = conn.kind == ListenerKind::Preview;

    // 2. Refuse what a proxy must not forward; find the target and host.
    let (mut parts, body) = req.into_parts();
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let head = rewrite::inspect(&mut parts)?;
    let on_upgrade = head.upgrade.as_ref().and(on_upgrade);

    // 3. The client's body, tagged so its failures are the client's. Taps
    //    need it whole; only bodies up to their caps are read into memory.
    let (body, mut body_sent) = if body.is_end_stream() {
        (Either::Right(Full::new(Bytes::new())), None)
    } else {
        let (b, sent, progress) = ClientBody::new(body, settings.client_body_timeout, started);
        *upload = Some(progress.clone());
        (Either::Left(b), Some((sent, progress)))
    };
    let shadow = shadow.filter(|s| on_upgrade.is_none() && s.wants(&parts.method, &parts.headers));
    let (body, whole) = if recorder.is_none() && shadow.is_none() {
        (body, None)
    } else {
        let cap = recorder
            .map(|r| r.options.max_body)
            .max(shadow.as_ref().map(|s| s.options.max_request_body))
            .unwrap_or(0);
        buffer(&parts.headers, body, cap).await?
    };
    // Recorded as the client sent it, before any rewriting.
    if let Some(r) = recorder {
        *record = Some(capture(&parts, &head.path, whole.as_ref(), r));
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

    // 4. The documented rewrites; the shadow copy is the request as the upstream sees it.
    let trusted = settings.trusts(conn.peer).then_some(&**settings);
    rewrite::rewrite(&mut parts, &head, &conn.peer_ip, trusted, &router.ids);
    let mut mirror = shadow.map(|s| {
        let m = Mirror::new(
            &parts.method,
            &head.path,
            &parts.headers,
            whole.unwrap_or_default(),
        );
        (s, m)
    });

    // 5. Pick an upstream and send. A connect failure sent nothing, so the
    //    very same request (head, extensions and body untouched) goes to
    //    another upstream of the side.
    let mut req = Request::from_parts(parts, body);
    let mut tried: Tried = 0;
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
        if head.host.is_none() {
            req.headers_mut()
                .insert(header::HOST, authority_value(&upstream));
        }
        let guard = InFlight::begin(upstream.clone(), epoch.clone());
        let limits = (settings.connect_timeout, settings.upstream_timeout);
        match send(&upstream, req, limits, &mut body_sent).await {
            Ok((resp, sender)) => {
                upstream.answered(resp.status().as_u16());
                let tee = mirror.take().map(|(s, m)| {
                    Tee::new(s, m, &resp, upstream.clone(), pool.side, started.elapsed())
                });
                let upgrade = on_upgrade.zip(head.upgrade);
                return respond(resp, sender, guard, upgrade, pool.clone(), router, tee);
            }
            Err(SendError::Connect(reason, back)) => {
                upstream.failed();
                if let Some(h) = upstream.mark_down(reason.clone()) {
                    router.events.emit(
                        "health",
                        serde_json::json!({"side": pool.side, "upstream": upstream.address,
                            "health": h, "reason": reason}),
                    );
                    tracing::warn!(side = %pool.side, upstream = %upstream.address, %reason, "upstream marked unhealthy after a failed connect");
                }
                let err = ProxyError::Connect {
                    upstream: upstream.address.clone(),
                    side: pool.side,
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
                    after: settings.upstream_timeout,
                });
            }
        }
    }
}

enum SendError {
    /// Nothing was sent: no connection could be opened. The request comes back.
    Connect(String, Box<Request<UpstreamBody>>),
    /// The client's body broke or stalled while it was being sent.
    Client(ClientBodyError),
    /// Sent, and then the connection failed.
    Upstream(String),
    /// No response head within the upstream timeout of the request being sent.
    Timeout,
}

/// Sends one request to `upstream` (for shadow copies); the error says why.
pub(crate) async fn send_upstream(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<(Response<Incoming>, Sender), String> {
    send(upstream, req, (connect_timeout, timeout), &mut None)
        .await
        .map_err(|e| match e {
            SendError::Connect(r, _) => format!("connect failed: {r}"),
            SendError::Client(e) => e.to_string(),
            SendError::Upstream(r) => r,
            SendError::Timeout => "timed out".into(),
        })
}

/// Sends on an idle pooled connection, or a new one. A pooled connection
/// that closed before the request was written hands the request back and
/// the next one is tried, so a stale keep-alive connection never fails a
/// request. `limits` are the connect and upstream timeouts; the upstream
/// timeout starts once `body_sent` says the body has gone out whole.
async fn send(
    upstream: &Upstream,
    mut req: Request<UpstreamBody>,
    (connect_timeout, upstream_timeout): (Duration, Duration),
    body_sent: &mut Option<(oneshot::Receiver<()>, Arc<Upload>)>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = upstream.conns.take() {
        match tokio::time::timeout(connect_timeout, sender.ready()).await {
            Err(_) | Ok(Err(_)) => continue,
            Ok(Ok(())) => {}
        }
        match answer(sender.try_send_request(req), body_sent, upstream_timeout).await {
            None => return Err(SendError::Timeout),
            Some(Ok(resp)) => return Ok((resp, sender)),
            Some(Err(mut e)) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(classify(e.error())),
            },
        }
    }
    let mut sender = match conn::connect(&upstream.address, connect_timeout).await {
        Err(e) => return Err(SendError::Connect(e.to_string(), Box::new(req))),
        Ok(s) => s,
    };
    match answer(sender.send_request(req), body_sent, upstream_timeout).await {
        None => Err(SendError::Timeout),
        Some(Ok(resp)) => Ok((resp, sender)),
        Some(Err(e)) => Err(classify(&e)),
    }
}

/// Waits for the response head. While the client's body is still going out,
/// the client's pace is bounded by the body's own stall timer, and an
/// upstream that stops taking bodies the client has ready by `limit`; once
/// it has gone out whole, the answer must come within `limit`.
async fn answer<F: Future>(
    fut: F,
    body_sent: &mut Option<(oneshot::Receiver<()>, Arc<Upload>)>,
    limit: Duration,
) -> Option<F::Output> {
    tokio::pin!(fut);
    if let Some((sent, upload)) = body_sent {
        loop {
            let stalled = upload.upstream_stalled_for().unwrap_or_default();
            let check =
                tokio::time::sleep(limit.saturating_sub(stalled).max(Duration::from_millis(10)));
            tokio::select! {
                biased;
                r = &mut fut => return Some(r),
                _ = &mut *sent => break,
                _ = check => {
                    if upload.upstream_stalled_for().is_some_and(|d| d >= limit) {
                        return None;
                    }
                }
            }
        }
        *body_sent = None;
    }
    tokio::time::timeout(limit, fut).await.ok()
}

/// A send that failed because of the client's body is the client's fault.
fn classify(e: &hyper::Error) -> SendError {
    match ClientBodyError::find(e) {
        Some(c) => SendError::Client(c),
        None => SendError::Upstream(error_chain(e)),
    }
}

/// Reads a body whole when it fits `cap` (by Content-Length) and forwards it
/// from memory; a larger one, or one of unknown length, streams on and the
/// taps go without it.
async fn buffer(
    headers: &HeaderMap,
    body: UpstreamBody,
    cap: usize,
) -> Result<(UpstreamBody, Option<Bytes>), ProxyError> {
    let body = match body {
        Either::Right(full) if full.is_end_stream() => {
            return Ok((Either::Right(full), Some(Bytes::new())))
        }
        other => other,
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if length.is_none_or(|n| n > cap) {
        return Ok((body, None));
    }
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| {
            ProxyError::ClientBody(
                ClientBodyError::find(&*e).unwrap_or(ClientBodyError::Broken(e.to_string())),
            )
        })?
        .to_bytes();
    Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
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

fn authority_value(upstream: &Upstream) -> HeaderValue {
    HeaderValue::from_str(upstream.authority.as_str())
        .expect("an authority is a valid header value")
}

/// Turns the upstream's response into the client's, streaming the body.
fn respond(
    mut resp: Response<Incoming>,
    sender: Sender,
    guard: InFlight,
    upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    pool: Arc<Pool>,
    router: &Arc<Router>,
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
    // An upstream that sent both framings is read as chunked (RFC 9112
    // §6.3); its stale length must not reach the client.
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| ResponseBody::Proxied(TrackedBody::new(b, guard, Some(sender), tee))))
}
