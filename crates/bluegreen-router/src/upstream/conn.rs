//! Connections to upstreams: a small pool of HTTP/1.1 connections per
//! upstream, built on hyper's connection API.
//!
//! Why not hyper-util's pooled client: on the request path it hashes a pool
//! key with SipHash, takes a pool-wide lock, and moves large futures around;
//! a list of idle connections per upstream needs none of that. A connection
//! goes back to its list only after its response body was read to the end.

use super::tls::UpstreamTls;
use crate::client_body::ClientBody;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Body type sent upstream: the client's body streamed, or one held in
/// memory (empty, or read whole because it is being recorded).
pub type UpstreamBody = Either<ClientBody, Full<Bytes>>;
/// One HTTP/1.1 connection's sending half.
pub type Sender = http1::SendRequest<UpstreamBody>;

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections unused this long are closed by [`ConnPool::purge`]
/// (HAProxy's `pool-purge-delay`): the pool is taken from the top, so under
/// steady load the same few stay warm and those a burst opened age out,
/// with the ~28 KiB of buffers each holds.
pub const PURGE_AFTER: Duration = Duration::from_secs(5);

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Timeout(Duration),
    TlsTimeout(Duration),
    Io(std::io::Error),
    Tls(std::io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout(d) => write!(f, "connect timed out after {d:?}"),
            ConnectError::TlsTimeout(d) => write!(f, "TLS handshake timed out after {d:?}"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "HTTP handshake failed: {e}"),
        }
    }
}

/// Idle connections to one upstream.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl ConnPool {
    /// An idle connection that is still open, if there is one.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(s);
            }
        }
        None
    }

    /// Closes the connections idle for longer than `age`; how many.
    pub fn purge(&self, age: Duration) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Oldest first (returned ones are pushed on top).
        let keep_from = idle
            .iter()
            .position(|(s, since)| !s.is_closed() && since.elapsed() < age)
            .unwrap_or(idle.len());
        let gone: Vec<_> = idle.drain(..keep_from).collect();
        drop(idle);
        // Dropped outside the lock: each ends its connection's task.
        drop(gone);
        keep_from
    }

    /// Returns a connection whose last response was read to the end.
    pub fn put(&self, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((s, Instant::now()));
        }
    }
}

/// Opens a new connection to `address` (`host:port`), over TLS when the
/// side says so; `limit` bounds the TCP connect and the TLS handshake each.
/// Nothing of a request has gone out when this fails.
pub async fn connect(
    address: &str,
    limit: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(limit, async {
        match address.parse::<SocketAddr>() {
            Ok(sa) => TcpStream::connect(sa).await,
            Err(_) => TcpStream::connect(address).await,
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout(limit))?
    .map_err(ConnectError::Io)?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => http(stream).await,
        Some(tls) => {
            let stream = tokio::time::timeout(limit, tls.handshake(stream, address))
                .await
                .map_err(|_| ConnectError::TlsTimeout(limit))?
                .map_err(ConnectError::Tls)?;
            http(stream).await
        }
    }
}

/// HTTP/1.1 over a connected stream; the connection task runs on its own.
async fn http<S>(stream: S) -> Result<Sender, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `purge` says how many it closed (the trimmer decides on that number).
    #[tokio::test]
    async fn purge_closes_the_old_and_counts_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let pool = ConnPool::default();
        for _ in 0..3 {
            let s = connect(&address, Duration::from_secs(5), None)
                .await
                .unwrap();
            pool.put(s);
        }
        assert_eq!(pool.purge(Duration::from_secs(3600)), 0, "none is old");
        assert_eq!(pool.purge(Duration::ZERO), 3, "all are older than zero");
        assert!(pool.take().is_none(), "the purged are gone");
        let s = connect(&address, Duration::from_secs(5), None)
            .await
            .unwrap();
        pool.put(s);
        assert_eq!(pool.purge(Duration::from_secs(3600)), 0);
        assert!(pool.take().is_some(), "a young one stays");
        held.abort();
    }
}
