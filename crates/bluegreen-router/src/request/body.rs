//! Response bodies: streamed from the upstream frame by frame (never
//! buffered), holding the request's in-flight registration until the last
//! frame, and cut when the old side's drain deadline passes.

use crate::snapshot::Epoch;
use crate::taps::shadow::Tee;
use crate::upstream::conn::Sender;
use crate::upstream::pool::Upstream;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Error type of every body the router sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request's claim on an upstream and (for live traffic) on its side's
/// drain epoch. Dropping it ends the claim.
pub struct InFlight {
    upstream: Arc<Upstream>,
    epoch: Option<Arc<Epoch>>,
    /// It holds one of the upstream's places (`proxy.upstream_max_requests`).
    slot: bool,
}

impl InFlight {
    /// Registers a request on `upstream` (and `epoch`, for live traffic).
    pub fn begin(upstream: Arc<Upstream>, epoch: Option<Arc<Epoch>>) -> InFlight {
        upstream.begin();
        if let Some(e) = &epoch {
            e.enter();
        }
        InFlight {
            upstream,
            epoch,
            slot: false,
        }
    }

    /// It holds a place at its upstream, given back when it ends.
    pub(crate) fn holding_slot(mut self, slot: bool) -> InFlight {
        self.slot = slot;
        self
    }

    /// Gives its place back now (an answer that became a tunnel: a
    /// WebSocket's hours must not hold a place HTTP requests wait for).
    pub(crate) fn free_slot(&mut self) {
        if std::mem::take(&mut self.slot) {
            self.upstream.free_slot();
        }
    }

    /// The drain epoch this request belongs to, if it is live traffic.
    pub fn epoch(&self) -> Option<&Arc<Epoch>> {
        self.epoch.as_ref()
    }

    /// The upstream serving this request.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.free_slot();
        self.upstream.end();
        if let Some(e) = &self.epoch {
            e.leave();
        }
    }
}

/// The drain deadline passed while this response was still streaming.
#[derive(Debug, thiserror::Error)]
#[error("response cut: the drain timeout of the old side passed")]
pub struct DrainCut;

/// An upstream response body on its way to the client.
pub struct TrackedBody {
    inner: Incoming,
    guard: Option<InFlight>,
    /// Armed the first time the body waits, so quick responses never pay for it.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The upstream connection, returned to its pool once the body was read whole.
    reuse: Option<Sender>,
    /// A copy of the body for shadow comparison, when this request was mirrored.
    tee: Option<Box<Tee>>,
}

impl TrackedBody {
    /// Wraps an upstream body; `guard` is released when it ends, and
    /// `reuse` goes back to the upstream's pool if it ends cleanly.
    pub fn new(
        inner: Incoming,
        guard: InFlight,
        reuse: Option<Sender>,
        tee: Option<Box<Tee>>,
    ) -> TrackedBody {
        TrackedBody {
            inner,
            guard: Some(guard),
            cut: None,
            reuse,
            tee,
        }
    }
}

impl TrackedBody {
    /// The body was read whole: the connection can serve another request,
    /// and a mirrored request's pair can be compared.
    fn release(&mut self) {
        if let (Some(g), Some(s)) = (self.guard.take(), self.reuse.take()) {
            g.upstream().conns.put(s);
        }
        if let Some(t) = self.tee.take() {
            t.finish();
        }
    }

    /// The body failed: nothing goes back to a pool or to comparison.
    fn fail(&mut self) {
        self.guard = None;
        if let Some(t) = self.tee.take() {
            t.abandon();
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // An empty body may never be polled at all.
        if self.inner.is_end_stream() {
            self.release();
        } else if let Some(t) = self.tee.take() {
            t.abandon();
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(cut) = &mut this.cut {
            if cut.as_mut().poll(cx).is_ready() {
                this.fail();
                return Poll::Ready(Some(Err(Box::new(DrainCut))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(t), Some(d)) = (&mut this.tee, frame.data_ref()) {
                    t.push(d);
                }
                // hyper stops polling once the body says it has ended, so
                // the last frame is where the connection goes back to its pool.
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.cut.is_none() {
                    let token = this
                        .guard
                        .as_ref()
                        .and_then(|g| g.epoch())
                        .map(|e| e.cut_token().clone());
                    if let Some(token) = token {
                        let mut cut = Box::pin(token.cancelled_owned());
                        if cut.as_mut().poll(cx).is_ready() {
                            this.fail();
                            return Poll::Ready(Some(Err(Box::new(DrainCut))));
                        }
                        this.cut = Some(cut);
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every body the router answers with.
pub enum ResponseBody {
    /// Streamed from an upstream.
    Proxied(TrackedBody),
    /// Made by the router itself (errors, upgrades).
    Local(Full<Bytes>),
}

impl ResponseBody {
    /// A body from a static or owned string.
    pub fn text(s: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Local(Full::new(s.into()))
    }

    /// A short answer of our own: plain text, never cached.
    pub fn plain(status: http::StatusCode, text: String) -> http::Response<ResponseBody> {
        use http::header::{self, HeaderValue};
        let mut resp = http::Response::new(ResponseBody::text(text));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody::Local(Full::new(Bytes::new()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Proxied(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Proxied(b) => b.is_end_stream(),
            ResponseBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Proxied(b) => b.size_hint(),
            ResponseBody::Local(b) => b.size_hint(),
        }
    }
}
