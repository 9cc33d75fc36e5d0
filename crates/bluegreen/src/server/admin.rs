//! Serves the admin API: plain HTTP on loopback, HTTPS (`admin.tls`) when
//! it listens beyond this host, so the bearer token never crosses a
//! network in clear unless the config says so.

use bluegreen_router::tls::HandshakeFailure;
use bluegreen_router::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `app` on `listener` until `stop`, then lets open requests end.
/// Failed TLS handshakes are counted in `router`'s metrics.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<(TlsAcceptor, Arc<Router>)>,
    stop: CancellationToken,
) {
    let Some((tls, router)) = tls else {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "admin API stopped");
        }
        return;
    };
    let conns = TaskTracker::new();
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let (tls, app, stop) = (tls.clone(), app.clone(), stop.clone());
        let router = router.clone();
        conns.spawn(async move {
            let handshake =
                tokio::time::timeout(bluegreen_router::tls::HANDSHAKE, tls.accept(sock));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let why = HandshakeFailure::of(&e);
                        router.tls_handshake_failures.count("admin", why, &e);
                        return;
                    }
                    Err(e) => {
                        let why = HandshakeFailure::Timeout;
                        router.tls_handshake_failures.count("admin", why, &e);
                        return;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    conns.close();
    conns.wait().await;
}
