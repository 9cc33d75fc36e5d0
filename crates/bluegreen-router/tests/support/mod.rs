//! An in-process router for fast tests: the real `Router`, listener and
//! health checks over a temp-dir store, in front of small tokio backends, all
//! on port 0. No binary, no child process: switch, drain, retry and pick
//! logic are tested in milliseconds. Builders read like the behaviour:
//! `Backend::start("blue")`, `Harness::start(&[&blue], &[&green])`.

#![allow(dead_code)]

use bluegreen_core::config::Config;
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_router::{health, listener, ListenerKind, Router};
use bluegreen_store::FileStore;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Waits until `cond` holds, or panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A backend answering its name (and `/hold` only when released).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<AtomicU64>,
    release: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Semaphore::new(0));
        let stop = CancellationToken::new();
        let (n, r, rel, st) = (
            name.to_string(),
            requests.clone(),
            release.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                    _ = st.cancelled() => return,
                };
                let (n, r, rel, st) = (n.clone(), r.clone(), rel.clone(), st.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (n, r, rel) = (n.clone(), r.clone(), rel.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            if path != "/healthz" {
                                r.fetch_add(1, Ordering::SeqCst);
                            }
                            if path == "/hold" {
                                rel.acquire().await.unwrap().forget();
                            }
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(n))))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc);
                    tokio::select! { _ = conn => {}, _ = st.cancelled() => {} }
                });
            }
        });
        Backend {
            addr,
            name: name.into(),
            requests,
            release,
            stop,
        }
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A router serving on 127.0.0.1:0 in this process.
pub struct Harness {
    pub router: Arc<Router>,
    pub proxy: SocketAddr,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Blue live, these upstreams, checks every 50 ms, a drain of `drain`.
    pub async fn start(blue: &[SocketAddr], green: &[SocketAddr], drain: &str) -> Harness {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream_timeout = \"5s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [health]\ninterval = \"50ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n\
             [environments.blue]\nupstreams = [{}]\n[environments.green]\nupstreams = [{}]\n\
             [switch]\ndrain_timeout = \"{drain}\"\n",
            list(blue),
            list(green)
        );
        let config = Config::parse(&text, "harness.toml", dir.path()).expect("harness config");
        let store = Arc::new(FileStore::open(&dir.path().join("state")).unwrap());
        let router = Router::new(config, store).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let _checks = health::spawn(&router.plane, stop.clone());
        tokio::spawn(listener::serve(
            router.plane.clone(),
            listener,
            ListenerKind::Main,
            None,
            stop.clone(),
            Duration::from_secs(1),
        ));
        Harness {
            router,
            proxy,
            stop,
            _dir: dir,
        }
    }

    /// Waits until both sides have a healthy upstream.
    pub async fn healthy(&self) {
        wait_until(Duration::from_secs(5), "both sides healthy", || async {
            let s = self.router.status().await;
            s.sides.blue.healthy > 0 && s.sides.green.healthy > 0
        })
        .await;
    }

    pub async fn switch(&self, to: Side) {
        self.router
            .switch(SwitchRequest {
                to,
                kind: SwitchKind::Switch,
                forced: false,
                actor: "test".into(),
                reason: "test".into(),
            })
            .await
            .unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One keep-alive HTTP/1.1 client connection.
pub struct Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { send }
    }

    /// GET `path`: (status, body), or the error.
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.send.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(path)
            .header("host", "harness")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    }
}
