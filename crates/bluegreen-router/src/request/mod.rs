//! The request path. One snapshot load decides everything about a request
//! (the side, its pool and drain epoch, the taps, the settings); the request
//! is then checked and rewritten (`rewrite`), its body wrapped
//! (`crate::client_body`), copies prepared for the taps (`prepare`), sent with
//! retries (`forward`, `send`) and the answer streamed back (`respond`,
//! `body`, `tunnel`). Failures become statuses in one place (`error`).
//! Nothing here takes a lock, but for one uncontended moment: giving an
//! upstream's place back (`proxy.upstream_max_requests`) goes through its
//! fair semaphore's wait list.

pub mod access;
pub mod body;
pub mod error;
pub mod forward;
pub mod headers;
pub mod hold;
pub mod prepare;
pub mod redirect;
pub mod respond;
pub mod rewrite;
pub mod send;
pub mod session;
pub mod tunnel;

use crate::client_body::Upload;
use crate::plane::clients::ListenerKind;
use crate::plane::Plane;
use crate::settings::ProxySettings;
use crate::snapshot::Epoch;
use crate::taps::recorder::Recorder;
use crate::taps::shadow::Shadow;
use crate::upstream::pool::Pool;
use access::AccessLine;
use bluegreen_core::config::AcmeChallenge;
use body::ResponseBody;
use error::ProxyError;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use crate::upstream::conn::UpstreamBody;

/// What a connection knows about itself, shared by its requests.
pub struct ConnCtx {
    pub plane: Arc<Plane>,
    pub kind: ListenerKind,
    /// Client IP, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// The same, to check against `trusted_proxies`.
    pub peer: IpAddr,
    /// What the listener is at the edge (shared by its connections).
    pub edge: Arc<Edge>,
}

/// What a listener is at the edge: HTTPS or not, and what that adds.
#[derive(Debug, Default)]
pub struct Edge {
    /// The connection is TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// `Strict-Transport-Security` for its answers (HTTPS only).
    pub hsts: Option<HeaderValue>,
    /// A plain listener that sends everyone to HTTPS on this port (308).
    pub redirect_to: Option<u16>,
    /// ACME HTTP-01 challenges this listener answers (live plain listener).
    pub acme: Option<Arc<crate::tls::challenge::Challenges>>,
}

impl Edge {
    /// The edge of a listener of `kind`, from the router's config.
    pub fn of(plane: &Plane, kind: ListenerKind, https: bool) -> Arc<Edge> {
        let config = plane.config();
        let tls = config.tls.as_ref();
        let hsts = tls
            .filter(|_| https)
            .and_then(|t| t.hsts.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let redirect_to = tls
            .filter(|t| !https && kind == ListenerKind::Main && t.redirect_http)
            .map(|_| plane.listener_port("https").unwrap_or(443));
        let acme = tls
            .and_then(|t| t.acme.as_ref())
            .filter(|a| {
                !https && kind == ListenerKind::Main && a.challenge == AcmeChallenge::Http01
            })
            .and_then(|_| plane.cert_store())
            .map(|c| c.challenges.clone());
        Arc::new(Edge {
            https,
            hsts,
            redirect_to,
            acme,
        })
    }
}

/// What one snapshot load decided for a request.
pub struct Route {
    pub pool: Arc<Pool>,
    /// The live side's drain epoch (none for preview traffic).
    pub epoch: Option<Arc<Epoch>>,
    pub settings: Arc<ProxySettings>,
    /// The recording, when this request was sampled for it.
    pub recorder: Option<Arc<Recorder>>,
    pub shadow: Option<Arc<Shadow>>,
    /// A pause of live traffic (main listener only).
    pub hold: Option<Arc<hold::Hold>>,
    /// Maintenance mode (main listener only).
    pub maintenance: Option<Arc<bluegreen_core::state::Maintenance>>,
    /// The session cookie to set on the answer, if the client's is missing
    /// or names another side.
    pub set_cookie: Option<HeaderValue>,
}

impl Route {
    /// 1. Loads one snapshot; it alone decides where this request goes.
    fn load(conn: &ConnCtx, headers: &http::HeaderMap) -> Route {
        let preview = conn.kind == ListenerKind::Preview;
        let snap = conn.plane.snapshot.load();
        let mut side = match snap.split {
            // A weighted split: the same clients (by their sticky key) go
            // to the other side every time.
            Some(split)
                if !preview
                    && snap.settings.bucket(headers, conn.peer) < split.basis_points
                    && snap.pools[split.side].healthy_count() > 0 =>
            {
                split.side
            }
            _ => snap.target(preview),
        };
        let mut set_cookie = None;
        if let (Some(policy), false) = (&snap.sessions, preview) {
            let (chosen, cookie) =
                session::route(&conn.plane, &snap, policy, headers, side, conn.edge.https);
            side = chosen;
            set_cookie = cookie;
        }
        // Requests kept on the old side (sessions) or sent to the idle side
        // by a preview cookie are not the live side's: no drain counts them
        // (it would cut them at its deadline), and no tap copies them.
        let kept = !preview && side != snap.live && snap.split.is_none_or(|s| s.side != side);
        Route {
            pool: snap.pools[side].clone(),
            epoch: (!preview && !kept).then(|| snap.epochs[side].clone()),
            settings: snap.settings.clone(),
            // Only live traffic is sampled (and recorded): preview requests
            // take no slot of the sampling sequence.
            recorder: snap
                .recorder
                .as_ref()
                .filter(|r| !preview && side == snap.live && r.sample())
                .cloned(),
            shadow: snap
                .shadow
                .as_ref()
                .filter(|_| !preview && side == snap.live)
                .cloned(),
            hold: snap.hold.as_ref().filter(|_| !preview).cloned(),
            maintenance: snap.maintenance.as_ref().filter(|_| !preview).cloned(),
            set_cookie,
        }
    }
}

/// Proxies one request; every failure becomes a response here.
pub async fn handle(req: Request<Incoming>, conn: &ConnCtx) -> Response<ResponseBody> {
    if let Some(challenges) = &conn.edge.acme {
        if let Some(key_auth) = challenges.answer(&req) {
            return ResponseBody::plain(http::StatusCode::OK, key_auth);
        }
    }
    if let Some(port) = conn.edge.redirect_to {
        // ACME challenges are never redirected: an app (or a CA checking
        // one) may still answer them over plain HTTP.
        if !crate::tls::challenge::is_challenge(&req) {
            return redirect::to_https(&req, port);
        }
    }
    if conn.kind == ListenerKind::Main && req.uri().path() == session::PREVIEW_PATH {
        return session::preview_landing(&conn.plane, &req, conn.edge.https);
    }
    let mut route = Route::load(conn, req.headers());
    // With several nodes: a node that did not run for a while checks the
    // shared state before serving live traffic (it may have missed a
    // switch). Boxed: the rare path.
    if conn.kind == ListenerKind::Main
        && conn.plane.freshness.as_ref().is_some_and(|f| f.in_doubt())
    {
        Box::pin(conn.plane.wait_until_fresh()).await;
        route = Route::load(conn, req.headers());
    }
    if let Some(m) = &route.maintenance {
        return hold::maintenance(&req, m);
    }
    let mut baton = None;
    if let Some(h) = route.hold.clone() {
        match h.wait().await {
            Err(why) => return hold::not_released(why, &h),
            Ok(b) => baton = Some(b),
        }
        // Released: routed by the snapshot of now (a switch made while
        // paused applies to the held requests; so does maintenance).
        route = Route::load(conn, req.headers());
        if let Some(m) = &route.maintenance {
            return hold::maintenance(&req, m);
        }
    }
    let started = Instant::now();
    let access = route.settings.access_log.then(|| AccessLine::of(&req));
    let mut record = None;
    let mut upload = None;
    let mut queued = std::time::Duration::ZERO;
    let result = forward::forward(
        req,
        conn,
        &route,
        started,
        forward::Out {
            record: &mut record,
            upload: &mut upload,
            queued: &mut queued,
            baton,
        },
    )
    .await;
    let client_fault = result.as_ref().is_err_and(ProxyError::is_client_fault);
    // A request refused by an upstream's queue waited there, not in the
    // app: counted, not timed.
    let queue_refused = matches!(&result, Err(ProxyError::Queue { .. }));
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
    let pool = &route.pool;
    let stats = match conn.kind {
        ListenerKind::Preview => &pool.preview_stats,
        ListenerKind::Main => &pool.live_stats,
    };
    // What the bake judges is the app's time to answer: a client's own
    // mistakes are counted but not timed, and an upload's own time is left out.
    let took = started.elapsed();
    let status = resp.status().as_u16();
    if client_fault || queue_refused {
        stats.record_untimed(status);
    } else {
        // Nor is the time it waited in an upstream's queue the app's.
        let upload_time = upload.as_deref().and_then(Upload::sent_after);
        let ours = upload_time.unwrap_or_default() + queued;
        stats.record(status, took - ours.min(took));
    }
    if let Some(a) = access {
        a.log(conn, pool.side, status, took);
    }
    if let (Some(r), Some(mut rec)) = (&route.recorder, record) {
        rec.status = Some(status);
        r.submit(rec);
    }
    let mut resp = resp;
    if let Some(c) = route.set_cookie.take() {
        // Not on a 101, not on our own error pages, and not on answers a
        // shared cache may keep (a CDN would stop caching them).
        let h = resp.headers();
        let shared = h
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("public") || v.contains("s-maxage"));
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            && !h.contains_key("x-bluegreen-error")
            && !shared
        {
            resp.headers_mut().append(http::header::SET_COOKIE, c);
        }
    }
    if let Some(h) = &conn.edge.hsts {
        // The app's own policy (includeSubDomains, preload) stands.
        resp.headers_mut()
            .entry(http::header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| h.clone());
    }
    resp
}
