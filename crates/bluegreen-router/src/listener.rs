//! Accept loops for the live and preview listeners, connection limits, and
//! graceful shutdown: stop accepting, let hyper finish in-flight requests,
//! give up at the grace deadline.

use crate::control::Router;
use crate::proxy::{self, ConnCtx};
use bluegreen_core::config::ProxyConfig;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Which traffic a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Live traffic, routed to the live side.
    Main,
    /// Preview traffic, routed to the idle side only.
    Preview,
}

impl ListenerKind {
    /// Name used in logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Main => "proxy",
            ListenerKind::Preview => "preview",
        }
    }
}

fn builder(config: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Also bounds the idle wait between requests on a keep-alive connection.
        .header_read_timeout(config.idle_timeout)
        .max_buf_size(config.max_header_bytes)
        // One flat buffer per write: small responses leave in one segment.
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(config.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(Some(512));
    b
}

/// Serves one listener until `stop` is cancelled, then drains its
/// connections for up to `grace`.
pub async fn serve(
    router: Arc<Router>,
    listener: TcpListener,
    kind: ListenerKind,
    stop: CancellationToken,
    grace: Duration,
) {
    let config = router.config().proxy.clone();
    let builder = Arc::new(builder(&config));
    let graceful = GracefulShutdown::new();
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
            router: router.clone(),
            kind,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                // Boxed: hyper keeps room for one request future per connection
                // for the connection's whole life, so an idle connection holds
                // a pointer instead of the whole request state machine.
                Box::pin(async move { Ok::<_, Infallible>(proxy::handle(req, &ctx).await) })
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        listener = kind.as_str(),
        open,
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = kind.as_str(),
            "grace period over; closing remaining connections"
        );
    }
}
