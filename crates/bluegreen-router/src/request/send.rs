//! One request to one upstream: an idle pooled connection or a new one, the
//! response head within its deadline, and each failure told apart (nothing
//! sent, the client's body, the upstream, a timeout).

use super::UpstreamBody;
use crate::client_body::{ClientBodyError, Upload};
use crate::upstream::conn::{self, Sender};
use crate::upstream::pool::Upstream;
use bluegreen_core::error_chain;
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Says when a streamed client body has gone out whole, and how it goes.
pub type BodySent = Option<(oneshot::Receiver<()>, Arc<Upload>)>;

/// Why a send failed.
pub enum SendError {
    /// Nothing was sent: no connection could be opened. The request comes back.
    Connect(String, Box<Request<UpstreamBody>>),
    /// Nothing was sent: a new connection opened and closed before the
    /// request was written (an upstream at its connection limit or shutting
    /// down). The request comes back; the upstream is not marked down for it.
    Closed(String, Box<Request<UpstreamBody>>),
    /// The client's body broke or stalled while it was being sent.
    Client(ClientBodyError),
    /// Sent, and then the connection closed or was reset before a complete
    /// response head came back: an idempotent request may go again.
    Empty(String),
    /// Sent, and then the connection failed otherwise (a malformed answer).
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
    send(
        upstream,
        req,
        (connect_timeout, timeout),
        &mut None,
        &mut None,
    )
    .await
    .map_err(|e| match e {
        SendError::Connect(r, _) => format!("connect failed: {r}"),
        SendError::Closed(r, _) => format!("connection closed before the request: {r}"),
        SendError::Client(e) => e.to_string(),
        SendError::Empty(r) | SendError::Upstream(r) => r,
        SendError::Timeout => "timed out".into(),
    })
}

/// Sends on an idle pooled connection, or a new one. A pooled connection
/// that closed before the request was written hands the request back and
/// the next one is tried, so a stale keep-alive connection never fails a
/// request. `limits` are the connect and upstream timeouts; the upstream
/// timeout starts once `body_sent` says the body has gone out whole.
///
/// A released held request's `baton` is dropped once its request is handed
/// to a connection, so the next one starts only then: held requests reach
/// the app in the order they came.
pub async fn send(
    upstream: &Upstream,
    mut req: Request<UpstreamBody>,
    (connect_timeout, upstream_timeout): (Duration, Duration),
    body_sent: &mut BodySent,
    baton: &mut Option<super::hold::Baton>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    // One call site for the send, so the request's future carries one
    // sending future, not one per kind of connection.
    loop {
        let (mut sender, fresh) = match upstream.conns.take() {
            Some(s) => (s, false),
            None => {
                // Boxed: a new connection is the rare path, and its future
                // (DNS, TLS) would otherwise make every request's future
                // kilobytes larger, all of it copied on the way.
                let connecting = Box::pin(conn::connect(
                    &upstream.address,
                    connect_timeout,
                    upstream.tls.as_deref(),
                ));
                match connecting.await {
                    Err(e) => {
                        drop(baton.take());
                        return Err(SendError::Connect(e.to_string(), Box::new(req)));
                    }
                    Ok(s) => (s, true),
                }
            }
        };
        if !fresh {
            match tokio::time::timeout(connect_timeout, sender.ready()).await {
                Err(_) | Ok(Err(_)) => continue,
                Ok(Ok(())) => {}
            }
        }
        let sending = sender.try_send_request(req);
        drop(baton.take());
        match answer(sending, body_sent, upstream_timeout).await {
            None => return Err(SendError::Timeout),
            Some(Ok(resp)) => return Ok((resp, sender)),
            Some(Err(mut e)) => match e.take_message() {
                // A pooled connection that closed before the request was
                // written: the next one (or a new one) gets it.
                Some(back) if !fresh => req = back,
                // A new connection that failed before anything was written:
                // nothing was sent, so the request may go elsewhere.
                Some(back) => {
                    return Err(SendError::Closed(error_chain(e.error()), Box::new(back)))
                }
                None => return Err(classify(e.error())),
            },
        }
    }
}

/// Waits for the response head. While the client's body is still going out,
/// the client's pace is bounded by the body's own stall timer, and an
/// upstream that stops taking bodies the client has ready by `limit`; once
/// it has gone out whole, the answer must come within `limit`.
async fn answer<F: Future>(fut: F, body_sent: &mut BodySent, limit: Duration) -> Option<F::Output> {
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

/// A send that failed because of the client's body is the client's fault;
/// a connection that ended (closed, reset, broken pipe) before an answer is
/// told apart from an answer that could not be read.
fn classify(e: &hyper::Error) -> SendError {
    if let Some(c) = ClientBodyError::find(e) {
        return SendError::Client(c);
    }
    if ended_without_answer(e) {
        SendError::Empty(error_chain(e))
    } else {
        SendError::Upstream(error_chain(e))
    }
}

/// True when the upstream's connection ended before a response head: hyper's
/// incomplete message, or a reset, abort or broken pipe underneath.
fn ended_without_answer(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::*;
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}
