//! One client connection: HTTP/2 when it opens with the preface, otherwise
//! HTTP/1 with keep-alive that holds no buffers while idle.
//!
//! hyper keeps an 8 KiB read and an 8 KiB write buffer for the whole life of
//! an HTTP/1 connection: 10,000 idle keep-alive clients cost 188 MiB. nginx
//! frees a connection's buffers between requests; this does the same around
//! hyper. The socket sits behind a [`Gate`] that hands hyper one request at a
//! time: a complete head, then exactly its `Content-Length` body, never a
//! partial head and never bytes of the next request while one is in flight.
//! When hyper asks for more with no response open, everything written and the
//! socket empty for a second, the gate answers end-of-stream and ignores the
//! shutdown that follows: hyper ends the connection cleanly and is dropped
//! with its buffers. The task keeps the bare socket, waits until it is
//! readable (bounded by the idle timeout) and starts a new hyper connection.
//!
//! Requests whose end the gate cannot see without framing them (chunked
//! bodies, upgrades, `CONNECT`, anything it cannot parse) turn it into a plain
//! pass-through for the rest of the connection: hyper frames them itself and
//! answers malformed ones, exactly as without the gate.

mod gate;
mod scan;

pub use gate::{Allow, Gate};
pub use scan::{scan, Scan};

use crate::plane::clients::ClientGauge;
use crate::request::body::ResponseBody;
use crate::request::{self, ConnCtx};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What every HTTP/2 connection opens with (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's default limit; a head with more headers is left for hyper to refuse.
pub const MAX_HEADERS: usize = 100;

/// How long an idle connection keeps hyper (and its buffers) before parking.
/// Starting a hyper connection again costs about 10,000 instructions, a third
/// of a proxied request, so a client that sends again within this pays
/// nothing and one that went quiet gives its buffers back soon after.
const LINGER: Duration = Duration::from_secs(1);

/// At most this many idle connections per listener linger (4 MiB of
/// buffers); beyond it an idle connection parks at once, as nginx does for
/// every one. This bounds memory when thousands of clients go quiet together,
/// which matters more then than the cost of parking.
const MAX_LINGERING: usize = 256;

/// The protocol settings every client connection of a listener shares.
pub struct Protocols {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    /// How long a connection may wait for its next request head.
    pub idle_timeout: Duration,
    /// Longest request head the gate assembles before leaving it to hyper.
    pub max_head: usize,
}

/// Counts one in a counter for as long as it lives.
pub(crate) struct Held<P: Deref<Target = AtomicUsize>>(P);

impl<P: Deref<Target = AtomicUsize>> Held<P> {
    pub(crate) fn new(counter: P) -> Held<P> {
        counter.fetch_add(1, Ordering::Relaxed);
        Held(counter)
    }
}

impl<P: Deref<Target = AtomicUsize>> Drop for Held<P> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client connection until it closes, fails, is upgraded, idles
/// out, or `drain` is cancelled (then in-flight requests finish first).
pub async fn serve(
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    protocols: Arc<Protocols>,
    drain: CancellationToken,
) {
    let gauge = ctx.plane.clients[ctx.kind as usize].clone();
    let plane = ctx.plane.clone();
    let _open = Held::new(&gauge.open);
    let open = Arc::new(AtomicUsize::new(0));
    // One request's future, for either protocol.
    let answer = {
        let open = open.clone();
        let draining = drain.clone();
        move |req: http::Request<hyper::body::Incoming>| {
            let ctx = ctx.clone();
            // Counted when hyper takes the request, released when hyper drops
            // the response body: the gate parks only while this is zero.
            let guard = Held::new(open.clone());
            let draining = draining.clone();
            async move {
                let h1 = req.version() < http::Version::HTTP_2;
                let mut resp = request::handle(req, &ctx).await;
                // Draining (a shutdown or a handover): the client learns
                // from this answer not to send another request here, rather
                // than from a reset under its next one.
                // (Not on a 101: the upgrade's own `Connection: upgrade`
                // must stand, or the client fails the handshake.)
                if h1
                    && draining.is_cancelled()
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|body| Counted {
                    body,
                    _guard: guard,
                }))
            }
        }
    };
    // HTTP/1: not boxed, hyper keeps the future in a slot it allocated once
    // per connection (freed when it parks); a box of our own was one more
    // allocation per request. HTTP/2: boxed, since hyper moves each stream's
    // future into a task of its own (4 KiB copied several times otherwise:
    // +4,500 instructions per request measured).
    let svc = service_fn(answer.clone());
    let mut gate = Gate::new(stream, open, protocols.max_head, gauge.clone());
    let idle = protocols.idle_timeout;

    // Boxed: this stage's state is gone once the first bytes are known,
    // instead of being kept in the task of every idle client.
    let Some(h2) = Box::pin(first_bytes(&mut gate, &drain, &plane, idle)).await else {
        return;
    };
    if h2 {
        gate.allow = Allow::All;
        let svc = service_fn(move |req| Box::pin(answer(req)));
        let mut conn = Box::pin(protocols.http2.serve_connection(TokioIo::new(gate), svc));
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
        return;
    }

    loop {
        // Boxed so a parked connection's task does not keep room for it.
        let mut conn = Box::new(
            protocols
                .http1
                .serve_connection(TokioIo::new(gate), svc.clone())
                .with_upgrades(),
        );
        // Not `graceful_shutdown` at once at a drain: it closes a connection
        // that is between requests, under a request the client may be
        // sending. Instead every answer given while draining says
        // `Connection: close`, and a quiet connection parks (within a
        // second) and is closed below.
        let result = tokio::select! {
            r = &mut *conn => r,
            _ = drain.cancelled() => {
                // A connection the gate cannot park (a chunked body, an
                // HTTP/1.0 client) gets its moment too, then a graceful
                // close rather than waiting out its idle timeout.
                tokio::select! {
                    r = &mut *conn => r,
                    _ = tokio::time::sleep(plane.drain_linger()) => {
                        Pin::new(&mut *conn).graceful_shutdown();
                        (&mut *conn).await
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "client connection ended with an error");
            return;
        }
        // None: upgraded, the tunnel owns the socket now.
        // Out of its box, which is freed here: a parked connection keeps
        // nothing of hyper's (the box would stay allocated until the loop
        // turns, 750 bytes for every idle client).
        // In a block of its own so nothing of `parts` is kept while parked.
        let unparked = match unbox(conn).into_parts() {
            Some(parts) => {
                gate = parts.io.into_inner();
                gate.unpark(parts.read_buf)
            }
            None => return,
        };
        if !unparked {
            return; // hyper closed it: the client left, or keep-alive ended
        }
        if !gate.ahead.is_empty() {
            continue; // hyper handed back bytes: serve them now
        }
        // Parked: the task holds the socket and nothing else until the
        // client sends again.
        let _parked = Held::new(&gauge.parked);
        let next = tokio::select! {
            biased;
            _ = drain.cancelled() => None,
            r = tokio::time::timeout(idle, gate.stream.readable()) => Some(r),
        };
        let ready = match next {
            Some(r) => r,
            // Handed over: a busy client's next request comes within
            // moments; it is answered (with `Connection: close`) instead of
            // racing a close. A connection that stays quiet is closed. At a
            // plain shutdown it closes at once: nobody would serve a retry.
            None if plane.handed_over() => {
                tokio::time::timeout(plane.drain_linger().min(idle), gate.stream.readable()).await
            }
            None => return,
        };
        if !matches!(ready, Ok(Ok(()))) {
            return;
        }
    }
}

/// Waits for the connection's first bytes: `Some(true)` for the HTTP/2
/// preface, `Some(false)` for anything else, `None` to close it. A
/// connection accepted just before a drain still gets its request answered
/// (a new process may already serve the next one).
async fn first_bytes(
    gate: &mut Gate,
    drain: &CancellationToken,
    plane: &crate::plane::Plane,
    idle: Duration,
) -> Option<bool> {
    let first = tokio::select! {
        biased;
        _ = drain.cancelled() => None,
        r = tokio::time::timeout(idle, gate.sniff_preface()) => Some(r),
    };
    let first = match first {
        Some(r) => r,
        None if plane.handed_over() => {
            tokio::time::timeout(plane.drain_linger().min(idle), gate.sniff_preface()).await
        }
        None => return None,
    };
    match first {
        Ok(Ok(h2)) => Some(h2),
        _ => None,
    }
}

/// Moves a value out of its box and frees the box now (the point of taking
/// a box).
#[allow(clippy::boxed_local)]
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// A response body that stays counted as open until hyper drops it.
pub(crate) struct Counted<G = Held<Arc<AtomicUsize>>> {
    body: ResponseBody,
    _guard: G,
}

impl<G> Counted<G> {
    /// `body`, holding `guard` until hyper drops it.
    pub(crate) fn new(body: ResponseBody, guard: G) -> Counted<G> {
        Counted {
            body,
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for Counted<G> {
    type Data = <ResponseBody as Body>::Data;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
