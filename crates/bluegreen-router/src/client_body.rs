//! The client's request body on its way to the upstream. A body that breaks
//! (malformed chunking, a client gone mid-body) or stalls is the client's
//! fault: its error is tagged here so the request path answers 400 or 408
//! and never blames, counts or marks down the upstream.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// Why the client's body could not be forwarded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the request body was malformed or cut off by the client: {0}")]
    Broken(String),
    #[error("the client sent no request body bytes for {0:?}")]
    Stalled(Duration),
}

impl ClientBodyError {
    /// The client fault somewhere in `err`'s chain of causes, if any.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<ClientBodyError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(c) = e.downcast_ref::<ClientBodyError>() {
                return Some(c.clone());
            }
            cur = e.source();
        }
        None
    }
}

/// How an upload is going, shared between the body (inside hyper's
/// connection task) and the request path waiting for the answer.
pub struct Upload {
    base: std::time::Instant,
    /// When the body last handed hyper a frame (µs since `base`).
    last_frame_us: AtomicU64,
    /// True while the body waits for the client (its own stall timer runs).
    waiting_client: AtomicBool,
    /// When the body was read whole (µs since `base`, plus one; 0: not yet).
    done_us: AtomicU64,
}

impl Upload {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// How long the upstream has not taken any of the body although the
    /// client had it ready: an upstream that stopped reading.
    pub fn upstream_stalled_for(&self) -> Option<Duration> {
        if self.waiting_client.load(Ordering::Relaxed) || self.done_us.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let since = self
            .now_us()
            .saturating_sub(self.last_frame_us.load(Ordering::Relaxed));
        Some(Duration::from_micros(since))
    }

    /// How long after the request began the body had been read whole.
    pub fn sent_after(&self) -> Option<Duration> {
        match self.done_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }
}

/// A streamed client body with a per-read deadline, which says when it has
/// been read to the end (so the upstream's deadline can start then).
pub struct ClientBody {
    inner: Incoming,
    limit: Duration,
    /// Armed the first time the body waits; pushed back after every frame.
    stall: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    sent: Option<oneshot::Sender<()>>,
    upload: Arc<Upload>,
}

impl ClientBody {
    /// Wraps `inner` of a request that began at `started`; the receiver
    /// completes when the body has been read whole (and errs when it was
    /// dropped before that).
    pub fn new(
        inner: Incoming,
        limit: Duration,
        started: std::time::Instant,
    ) -> (ClientBody, oneshot::Receiver<()>, Arc<Upload>) {
        let (tx, rx) = oneshot::channel();
        let upload = Arc::new(Upload {
            base: started,
            last_frame_us: AtomicU64::new(started.elapsed().as_micros() as u64),
            waiting_client: AtomicBool::new(false),
            done_us: AtomicU64::new(0),
        });
        let body = ClientBody {
            inner,
            limit,
            stall: None,
            progressed: false,
            sent: Some(tx),
            upload: upload.clone(),
        };
        (body, rx, upload)
    }

    fn finished(&mut self) {
        if let Some(tx) = self.sent.take() {
            let u = &self.upload;
            u.done_us.store(u.now_us() + 1, Ordering::Relaxed);
            let _ = tx.send(());
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed = true;
                let u = &this.upload;
                u.waiting_client.store(false, Ordering::Relaxed);
                u.last_frame_us.store(u.now_us(), Ordering::Relaxed);
                if this.inner.is_end_stream() {
                    this.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Broken(
                bluegreen_core::error_chain(&e),
            )))),
            Poll::Ready(None) => {
                this.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.upload.waiting_client.store(true, Ordering::Relaxed);
                let limit = this.limit;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if std::mem::take(&mut this.progressed) {
                    stall.as_mut().reset(Instant::now() + limit);
                }
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Stalled(limit)))),
                    Poll::Pending => Poll::Pending,
                }
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
