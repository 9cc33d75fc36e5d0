//! The gate between a client's socket and hyper: one request at a time (a
//! complete head, then exactly its body), end-of-stream when the connection
//! may park, a plain pass-through for what it cannot frame.

use super::scan::may_end_head;
use super::*;

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
    pub(super) stream: TcpStream,
    /// Bytes read from the socket that hyper may not have yet.
    pub(super) ahead: BytesMut,
    /// How much of `ahead` is known to hold no end of a head.
    pub(super) scanned: usize,
    pub(super) allow: Allow,
    /// Responses hyper has taken and not yet dropped.
    pub(super) open: Arc<AtomicUsize>,
    /// hyper flushed with no response open since the last head was handed over.
    pub(super) quiet: bool,
    /// Armed when a quiet connection first waits; parks it when it fires.
    pub(super) linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer is armed for the current idle stretch (and counted in
    /// `gauge.lingering`).
    pub(super) lingering: bool,
    pub(super) gauge: Arc<ClientGauge>,
    /// The gate ended hyper's connection to park it; shutdown must not close.
    pub(super) parked: bool,
    pub(super) max_head: usize,
}

impl Gate {
    pub(super) fn new(
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
    pub(super) fn unpark(&mut self, unread: Bytes) -> bool {
        if !unread.is_empty() {
            let mut ahead = BytesMut::from(&unread[..]);
            ahead.extend_from_slice(&self.ahead);
            self.ahead = ahead;
            self.scanned = 0;
        }
        std::mem::take(&mut self.parked)
    }

    /// Reads until the first bytes either are or cannot be the HTTP/2 preface.
    pub(super) async fn sniff_preface(&mut self) -> io::Result<bool> {
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
    pub(super) fn try_read_ahead(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 4096];
        let n = self.stream.try_read(&mut buf)?;
        self.ahead.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// True once this idle stretch has lasted [`LINGER`], or at once when
    /// [`MAX_LINGERING`] connections already linger; until then the timer
    /// wakes the task to ask again.
    pub(super) fn linger_over(&mut self, cx: &mut Context<'_>) -> bool {
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
    pub(super) fn stop_lingering(&mut self) {
        if std::mem::take(&mut self.lingering) {
            self.gauge.lingering.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Copies up to `limit` bytes from `ahead` into hyper's buffer.
    pub(super) fn give(&mut self, buf: &mut ReadBuf<'_>, limit: u64) -> usize {
        let n = (self.ahead.len() as u64)
            .min(limit)
            .min(buf.remaining() as u64) as usize;
        buf.put_slice(&self.ahead[..n]);
        self.consume(n);
        n
    }

    /// Drops `n` bytes from the front of `ahead`.
    pub(super) fn consume(&mut self, n: usize) {
        self.ahead.advance(n);
        self.scanned = 0;
        if self.ahead.is_empty() {
            // Parked connections keep no allocation.
            self.ahead = BytesMut::new();
        }
    }

    /// Blank lines before a request head are ignored (RFC 9112, section 2.2),
    /// as hyper does; held back, they would keep a connection from parking.
    pub(super) fn skip_blank_lines(&mut self) {
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
