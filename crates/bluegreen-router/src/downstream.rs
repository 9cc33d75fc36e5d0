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

/// How much of what the client sent hyper may have now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Nothing until a complete request head has arrived.
    Head,
    /// Up to this many more bytes: the rest of the current head and body.
    Body(u64),
    /// Everything: hyper frames the rest of this connection itself.
    All,
}

/// The client socket as hyper sees it. See the module docs.
pub struct Gate {
    stream: TcpStream,
    /// Bytes read from the socket that hyper may not have yet.
    ahead: BytesMut,
    /// How much of `ahead` is known to hold no end of a head.
    scanned: usize,
    allow: Allow,
    /// Responses hyper has taken and not yet dropped.
    open: Arc<AtomicUsize>,
    /// hyper flushed with no response open since the last head was handed over.
    quiet: bool,
    /// Armed when a quiet connection first waits; parks it when it fires.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer is armed for the current idle stretch (and counted in
    /// `gauge.lingering`).
    lingering: bool,
    gauge: Arc<ClientGauge>,
    /// The gate ended hyper's connection to park it; shutdown must not close.
    parked: bool,
    max_head: usize,
}

impl Gate {
    fn new(
        stream: TcpStream,
        open: Arc<AtomicUsize>,
        max_head: usize,
        gauge: Arc<ClientGauge>,
    ) -> Gate {
        Gate {
            stream,
            ahead: BytesMut::new(),
            scanned: 0,
            allow: Allow::Head,
            open,
            quiet: true,
            linger: None,
            lingering: false,
            gauge,
            parked: false,
            max_head,
        }
    }

    /// After hyper's connection ended: true if the gate parked it (keep the
    /// socket), false if it really closed. Anything hyper had buffered goes
    /// back in front of the socket, so no byte is lost either way.
    fn unpark(&mut self, unread: Bytes) -> bool {
        if !unread.is_empty() {
            let mut ahead = BytesMut::from(&unread[..]);
            ahead.extend_from_slice(&self.ahead);
            self.ahead = ahead;
            self.scanned = 0;
        }
        std::mem::take(&mut self.parked)
    }

    /// Reads until the first bytes either are or cannot be the HTTP/2 preface.
    async fn sniff_preface(&mut self) -> io::Result<bool> {
        loop {
            let n = self.ahead.len().min(PREFACE.len());
            if self.ahead[..n] != PREFACE[..n] {
                return Ok(false);
            }
            if n == PREFACE.len() {
                return Ok(true);
            }
            self.stream.readable().await?;
            match self.try_read_ahead() {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One non-blocking read appended to `ahead`, through a stack buffer so
    /// `ahead` is only as large as what arrived.
    fn try_read_ahead(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 4096];
        let n = self.stream.try_read(&mut buf)?;
        self.ahead.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// True once this idle stretch has lasted [`LINGER`], or at once when
    /// [`MAX_LINGERING`] connections already linger; until then the timer
    /// wakes the task to ask again.
    fn linger_over(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.lingering {
            // One step, so that workers racing here cannot pass the cap.
            let room =
                self.gauge
                    .lingering
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < MAX_LINGERING).then_some(n + 1)
                    });
            if room.is_err() {
                return true;
            }
            self.lingering = true;
            let deadline = tokio::time::Instant::now() + LINGER;
            match &mut self.linger {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.linger = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = self.linger.as_mut().expect("armed above");
        timer.as_mut().poll(cx).is_ready()
    }

    /// The idle stretch is over: a head came, or the connection parks or ends.
    fn stop_lingering(&mut self) {
        if std::mem::take(&mut self.lingering) {
            self.gauge.lingering.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Copies up to `limit` bytes from `ahead` into hyper's buffer.
    fn give(&mut self, buf: &mut ReadBuf<'_>, limit: u64) -> usize {
        let n = (self.ahead.len() as u64)
            .min(limit)
            .min(buf.remaining() as u64) as usize;
        buf.put_slice(&self.ahead[..n]);
        self.consume(n);
        n
    }

    /// Drops `n` bytes from the front of `ahead`.
    fn consume(&mut self, n: usize) {
        self.ahead.advance(n);
        self.scanned = 0;
        if self.ahead.is_empty() {
            // Parked connections keep no allocation.
            self.ahead = BytesMut::new();
        }
    }

    /// Blank lines before a request head are ignored (RFC 9112, section 2.2),
    /// as hyper does; held back, they would keep a connection from parking.
    fn skip_blank_lines(&mut self) {
        let n = self
            .ahead
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if n > 0 {
            self.consume(n);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop_lingering();
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.allow {
                Allow::All => {
                    if !this.ahead.is_empty() {
                        this.give(buf, u64::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.stream).poll_read(cx, buf);
                }
                Allow::Body(0) => this.allow = Allow::Head,
                Allow::Body(left) => {
                    let start = buf.filled().len();
                    if this.ahead.is_empty() {
                        std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
                        // Whatever came past this request waits in `ahead`.
                        let got = (buf.filled().len() - start) as u64;
                        if got > left {
                            let keep = start + left as usize;
                            this.ahead.extend_from_slice(&buf.filled()[keep..]);
                            buf.set_filled(keep);
                        }
                    } else {
                        this.give(buf, left);
                    }
                    let given = (buf.filled().len() - start) as u64;
                    this.allow = Allow::Body(left - given);
                    // Zero bytes from the socket: end of stream, and hyper
                    // reports the request it cut short.
                    return Poll::Ready(Ok(()));
                }
                Allow::Head => {
                    this.skip_blank_lines();
                    if !this.ahead.is_empty() {
                        // Parse again only when the new bytes may end the
                        // head: a client sending a byte at a time must not
                        // cost a parse of everything held per byte.
                        let parse = this.ahead.len() >= this.max_head
                            || may_end_head(&this.ahead, this.scanned);
                        this.scanned = this.ahead.len();
                        if parse {
                            if let Scan::Ready(allow) = scan(&this.ahead, this.max_head) {
                                this.quiet = false;
                                this.stop_lingering();
                                this.allow = allow;
                                continue;
                            }
                        }
                    }
                    let start = buf.filled().len();
                    match Pin::new(&mut this.stream).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if this.ahead.is_empty()
                                && this.quiet
                                && this.open.load(Ordering::Relaxed) == 0
                                && this.linger_over(cx)
                            {
                                // Idle with nothing in flight: end hyper's
                                // connection; the task keeps the socket.
                                this.parked = true;
                                this.linger = None;
                                this.stop_lingering();
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Pending;
                        }
                    }
                    let got = buf.filled().len() - start;
                    if got == 0 {
                        if this.ahead.is_empty() {
                            return Poll::Ready(Ok(())); // the client closed
                        }
                        // A partial head, then the end: hyper sees both.
                        this.allow = Allow::All;
                        continue;
                    }
                    if this.ahead.is_empty() {
                        // The common case: a whole head in one read, straight
                        // into hyper's buffer.
                        if let Scan::Ready(allow) = scan(&buf.filled()[start..], this.max_head) {
                            this.quiet = false;
                            this.stop_lingering();
                            this.allow = allow;
                            if let Allow::Body(len) = allow {
                                let keep = (got as u64).min(len) as usize;
                                this.ahead.extend_from_slice(&buf.filled()[start + keep..]);
                                buf.set_filled(start + keep);
                                this.allow = Allow::Body(len - keep as u64);
                            }
                            return Poll::Ready(Ok(()));
                        }
                    }
                    // Not a whole head yet: hold it back and read on. A
                    // client that started a request is not idle.
                    this.stop_lingering();
                    let fresh = this.ahead.is_empty();
                    this.ahead.extend_from_slice(&buf.filled()[start..]);
                    buf.set_filled(start);
                    if fresh {
                        this.scanned = this.ahead.len(); // parsed just above
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        // hyper flushes its socket only once its own buffer is written out,
        // so with no response open everything has left.
        if this.open.load(Ordering::Relaxed) == 0 {
            this.quiet = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// What the gate learned from the bytes before a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Not a whole head yet.
    Partial,
    /// A whole head (or something hyper must judge): how much to hand over.
    Ready(Allow),
}

/// Finds the end of the request head in `bytes` and the body length after it.
pub fn scan(bytes: &[u8], max_head: usize) -> Scan {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() < max_head => return Scan::Partial,
        // Too long, too many headers, malformed: hyper answers it.
        _ => return Scan::Ready(Allow::All),
    };
    if req.method == Some("CONNECT") {
        return Scan::Ready(Allow::All);
    }
    let mut body: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, body) {
                (Some(n), None) => body = Some(n),
                _ => return Scan::Ready(Allow::All), // repeated or odd: hyper decides
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            return Scan::Ready(Allow::All);
        }
    }
    match (head_len as u64).checked_add(body.unwrap_or(0)) {
        Some(total) => Scan::Ready(Allow::Body(total)),
        None => Scan::Ready(Allow::All),
    }
}

/// Whether `bytes` may hold the end of a head (an empty line) at or after
/// `from` (`\n\n` or `\n\r\n`, as httparse accepts bare newlines).
fn may_end_head(bytes: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    bytes.get(start..).is_some_and(|tail| {
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_head_is_handed_over_alone() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            scan(head, 8192),
            Scan::Ready(Allow::Body(head.len() as u64))
        );
        assert_eq!(scan(&head[..10], 8192), Scan::Partial);
    }

    #[test]
    fn a_content_length_body_is_counted_in() {
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            scan(head, 8192),
            Scan::Ready(Allow::Body(head.len() as u64 + 5))
        );
    }

    #[test]
    fn only_an_empty_line_can_end_a_head() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(may_end_head(head, 0));
        assert!(
            may_end_head(head, head.len() - 1),
            "the end straddles `from`"
        );
        assert!(!may_end_head(&head[..head.len() - 2], 0));
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: a\n\n", 10));
        assert!(!may_end_head(head, head.len() + 5));
    }

    #[test]
    fn a_huge_content_length_is_left_to_hyper() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551600\r\n\r\n";
        assert_eq!(scan(head, 8192), Scan::Ready(Allow::All));
    }

    #[test]
    fn what_the_gate_cannot_frame_goes_to_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(scan(head, 8192), Scan::Ready(Allow::All), "{head:?}");
        }
        // A head that never ends within the limit.
        let long = [b'a'; 100];
        assert_eq!(scan(&long[..], 50), Scan::Ready(Allow::All));
    }
}
