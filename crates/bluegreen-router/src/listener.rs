//! Accept loops for the live and preview listeners, connection limits, and
//! graceful shutdown: stop accepting, close idle connections, let hyper
//! finish in-flight requests, give up at the grace deadline.

use crate::downstream::{self, Protocols};
use crate::plane::clients::ListenerKind;
use crate::plane::Plane;
use crate::request::{ConnCtx, Edge};
use bluegreen_core::config::ProxyConfig;
use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn protocols(config: &ProxyConfig) -> Protocols {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Bounds a slow request head; the wait between requests is bounded
        // while the connection is parked (see `downstream`).
        .header_read_timeout(config.idle_timeout)
        .max_buf_size(config.max_header_bytes)
        // One flat buffer per write: small responses leave in one segment.
        .writev(false);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(config.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(Some(512));
    Protocols {
        http1,
        http2,
        idle_timeout: config.idle_timeout,
        max_head: config.max_header_bytes,
    }
}

/// Serves one listener until `stop` is cancelled, then drains its
/// connections for up to `grace`.
pub async fn serve(
    plane: Arc<Plane>,
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    grace: Duration,
) {
    let config = plane.config().proxy.clone();
    let protocols = Arc::new(protocols(&config));
    let edge = Edge::of(&plane, kind, tls.is_some());
    let connections = TaskTracker::new();
    let drain = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = kind.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnCtx {
            plane: plane.clone(),
            kind,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            peer: peer.ip(),
            edge: edge.clone(),
        });
        let protocols = protocols.clone();
        let drain = drain.clone();
        let tls = tls.clone();
        // One task type per kind of listener: a plain connection's task must
        // not carry room for a TLS handshake (10 KiB, for every idle client).
        match tls {
            Some(acceptor) => connections.spawn(async move {
                crate::tls::serve(stream, acceptor, ctx, protocols, drain).await;
                drop(permit);
            }),
            None => connections.spawn(async move {
                downstream::serve(stream, ctx, protocols, drain).await;
                drop(permit);
            }),
        };
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(
        listener = kind.as_str(),
        open,
        "stopped accepting; draining connections"
    );
    // Parked connections close at once; busy ones finish their request.
    drain.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = kind.as_str(),
            "grace period over; closing remaining connections"
        );
    }
}
