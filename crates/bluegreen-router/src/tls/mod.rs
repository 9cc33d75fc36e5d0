//! TLS termination: certificates loaded and checked (chain, matching key,
//! names, expiry), SNI picking one, and HTTPS connections served by hyper
//! (HTTP/2 by ALPN, HTTP/1.1 with upgrades) into the same request path as
//! plain HTTP. rustls with the `ring` provider: pure Rust plus a C compiler
//! that is there anyway (no cmake or Go, unlike aws-lc-rs), and it is what
//! rustls tests most.

pub mod acme;
pub mod certs;
pub mod challenge;
pub mod failures;

pub use certs::{watch, CertInfo, CertStore, Certificates, Reload};

use crate::downstream::{Counted, Held, Protocols};
use crate::request::{self, ConnCtx};
use bluegreen_core::config::{AcmeChallenge, TlsConfig, TlsVersion};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A PEM parse error in words (the missing marker as text).
pub use bluegreen_store::pem_error;
/// Every certificate of a PEM file as trust roots (a private CA, a test
/// CA's bundle); the error names the file and what is wrong.
pub use bluegreen_store::roots_from_pem;

pub(crate) use crate::crypto::provider;
pub use failures::{HandshakeFailure, HandshakeFailures, HANDSHAKE};

/// The server side of TLS: versions, ALPN (`h2`, `http/1.1`), SNI.
pub fn acceptor(config: &TlsConfig) -> Result<(TlsAcceptor, Arc<CertStore>), String> {
    let certs = Arc::new(CertStore::new(&config.certificates)?);
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Returning clients resume with a ticket instead of a full handshake
    // (keys rotate every 6 hours, held only in memory).
    server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls: {e}"))?;
    if config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == AcmeChallenge::TlsAlpn01)
    {
        server
            .alpn_protocols
            .push(challenge::ACME_TLS_ALPN.to_vec());
    }
    Ok((TlsAcceptor::from(Arc::new(server)), certs))
}

/// The admin API's HTTPS: its one certificate (watched like the edge's),
/// TLS 1.2 and 1.3, HTTP/1.1 only (what the admin server speaks).
pub fn admin_acceptor(
    pair: &bluegreen_core::config::CertificatePair,
) -> Result<(TlsAcceptor, Arc<CertStore>), String> {
    let certs = Arc::new(CertStore::new(std::slice::from_ref(pair))?);
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(server)), certs))
}

/// Open responses on one HTTPS connection and when the last one ended: an
/// idle connection (HTTP/2 included, whose pings keep it alive otherwise) is
/// closed after `idle_timeout`, as on the plain listeners.
struct Activity {
    open: AtomicUsize,
    base: Instant,
    last_ms: AtomicU64,
    /// Its listener's gauge: busy while a response is open.
    gauge: Arc<crate::plane::clients::ClientGauge>,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        (self.open.load(Ordering::Relaxed) == 0).then(|| {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            self.base.elapsed().saturating_sub(last)
        })
    }
}

/// One open response; its end is the connection's last activity.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        if a.open.fetch_add(1, Ordering::Relaxed) == 0 {
            a.gauge.tls_busy.fetch_add(1, Ordering::Relaxed);
        }
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        if a.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.gauge.tls_busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Serves one HTTPS connection: the handshake, then HTTP/2 (by ALPN) or
/// HTTP/1.1 with upgrades, until the client is done, it idles for
/// `idle_timeout`, or `drain` asks the connection to finish what it has
/// and close.
pub async fn serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    ctx: Arc<ConnCtx>,
    protocols: Arc<Protocols>,
    drain: CancellationToken,
) {
    let gauge = ctx.plane.clients[ctx.kind as usize].clone();
    let _open = Held::new(&gauge.open);
    // Boxed, in a block of its own: the handshake's state (and its timer)
    // is freed once it is done, rather than kept in the task of every idle
    // TLS client (a local lives to the end of its scope in an async fn).
    let handshake = {
        let mut accept = Box::pin(tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)));
        tokio::select! {
            r = accept.as_mut() => r,
            _ = drain.cancelled() => {
                // After a handover, a handshake in progress still completes
                // and its request is answered (with `Connection: close`).
                if !ctx.plane.handed_over() {
                    return;
                }
                accept.await
            }
        }
    };
    let failures = &ctx.plane.tls_handshake_failures;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            failures.count(ctx.kind.as_str(), HandshakeFailure::of(&e), &e);
            return;
        }
        Err(e) => {
            failures.count(ctx.kind.as_str(), HandshakeFailure::Timeout, &e);
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol();
    if alpn == Some(challenge::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 check ends with the handshake (RFC 8737).
        let mut tls = tls;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return;
    }
    let h2 = alpn == Some(b"h2");
    let io = TokioIo::new(tls);
    let _tls_open = Held::new(&gauge.tls_open);
    let activity = Arc::new(Activity {
        open: AtomicUsize::new(0),
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
        gauge: gauge.clone(),
    });
    let plane = ctx.plane.clone();
    // One request's future; boxed for HTTP/2 only (see `downstream::serve`).
    let answer = {
        let activity = activity.clone();
        let draining = drain.clone();
        move |req: http::Request<hyper::body::Incoming>| {
            let ctx = ctx.clone();
            let busy = Busy::new(&activity);
            let draining = draining.clone();
            async move {
                let h1 = req.version() < http::Version::HTTP_2;
                let mut resp = request::handle(req, &ctx).await;
                // As on plain listeners: a draining answer tells the client
                // to go elsewhere for its next request (not on a 101).
                if h1
                    && draining.is_cancelled()
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|b| Counted::new(b, busy)))
            }
        }
    };
    let idle = idle_out(activity, protocols.idle_timeout);
    if h2 {
        let svc = service_fn(move |req| Box::pin(answer(req)));
        let conn = protocols.http2.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { tokio::select! { _ = drain.cancelled() => {}, _ = idle => {} } } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let conn = protocols
            .http1
            .serve_connection(io, service_fn(answer))
            .with_upgrades();
        tokio::pin!(conn);
        let draining = tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.cancelled() => true,
            _ = idle => false,
        };
        // At a drain the client gets a moment for the request it may be
        // sending (answered with `Connection: close`) before the close.
        if draining {
            let linger = tokio::time::sleep(plane.drain_linger().min(protocols.idle_timeout));
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = linger => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Resolves once the connection has had no open response for `limit`.
async fn idle_out(activity: Arc<Activity>, limit: Duration) {
    loop {
        let wait = match activity.idle_for() {
            Some(idle) if idle >= limit => return,
            Some(idle) => limit - idle,
            None => limit,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}
