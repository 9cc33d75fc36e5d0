//! The client's request body on its way to the upstream. A body that breaks
//! (malformed chunking, a client gone mid-body) or stalls is the client's
//! fault: its error is tagged here so the request path answers 400 or 408
//! and never blames, counts or marks down the upstream.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
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

/// A streamed client body with a per-read deadline, which says when it has
/// been read to the end (so the upstream's deadline can start then).
pub struct ClientBody {
    inner: Incoming,
    limit: Duration,
    /// Armed the first time the body waits; pushed back after every frame.
    stall: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    sent: Option<oneshot::Sender<()>>,
}

impl ClientBody {
    /// Wraps `inner`; the receiver completes when the body has been read whole
    /// (and errs when it was dropped before that).
    pub fn new(inner: Incoming, limit: Duration) -> (ClientBody, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let body = ClientBody {
            inner,
            limit,
            stall: None,
            progressed: false,
            sent: Some(tx),
        };
        (body, rx)
    }

    fn finished(&mut self) {
        if let Some(tx) = self.sent.take() {
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
