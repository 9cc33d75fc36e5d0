//! Test harness: real upstream servers and the real `bluegreen` binary, all on
//! port 0, state in temp dirs. Builders make tests read like the behaviour:
//! `Backend::start("blue")`, `RouterBuilder::new(&[&blue], &[&green]).start()`.

#![allow(dead_code)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";
type TestBody = BoxBody<Bytes, Infallible>;

/// Waits until `cond` holds, polling, or panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- upstream backends --------------------------------------------------------

/// Controls shared by a backend and the test that drives it.
pub struct BackendState {
    pub name: String,
    pub healthy: AtomicBool,
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Released by the test to let `/hold` and the second SSE event proceed.
    pub release: Semaphore,
    /// Request headers of the last `/headers` call.
    pub last_headers: Mutex<BTreeMap<String, String>>,
    /// `/shadow/*` requests that carried `X-Bluegreen-Shadow: 1`.
    pub shadowed: AtomicU64,
    /// `POST /shadow/write` requests received, and the last body.
    pub writes: AtomicU64,
    pub last_write: Mutex<String>,
}

/// A real HTTP server on 127.0.0.1:0 that answers with its name.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    stop: CancellationToken,
}

impl Backend {
    /// Starts a backend named `name` (its body on `/`).
    pub async fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a backend on a given address (to restart one in place).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        // A killed backend on this address lets go of it asynchronously.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            release: Semaphore::new(0),
            last_headers: Mutex::new(BTreeMap::new()),
            shadowed: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            last_write: Mutex::new(String::new()),
        });
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (st, builder, stop3) = (st.clone(), builder.clone(), stop2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(route(req, st).await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! { _ = conn => {}, _ = stop3.cancelled() => {} }
                });
            }
        });
        Backend { addr, state, stop }
    }

    /// Stops listening and drops every open connection (the upstream "dies").
    pub fn kill(&self) {
        self.stop.cancel();
    }

    /// Lets `n` held requests (`/hold`, the second SSE event) proceed; a
    /// release that comes before the request waits for it.
    pub fn release(&self, n: usize) {
        self.state.release.add_permits(n);
    }

    pub fn set_healthy(&self, ok: bool) {
        self.state.healthy.store(ok, Ordering::SeqCst);
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).boxed()
}

async fn route(mut req: Request<Incoming>, st: Arc<BackendState>) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path != "/healthz" {
        st.requests.fetch_add(1, Ordering::SeqCst);
    }
    if path.starts_with("/shadow/") {
        return shadow_route(req, &path, &st).await;
    }
    match path.as_str() {
        "/healthz" if st.healthy.load(Ordering::SeqCst) => Response::new(full("ok")),
        "/healthz" => Response::builder().status(503).body(full("down")).unwrap(),
        // Fails on the "new version" (green*) only: a bad release.
        "/fail" if st.name.starts_with("green") => Response::builder()
            .status(500)
            .body(full(st.name.clone()))
            .unwrap(),
        // Several chunks, each naming the side: a mixed body would show.
        "/chunked" => {
            let name = st.name.clone();
            let chunks = futures_util::stream::iter(0..4).then(move |i| {
                let name = name.clone();
                async move {
                    tokio::task::yield_now().await;
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{name}:{i};"))))
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "/headers" => {
            let map: BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect();
            *st.last_headers.lock().unwrap() = map.clone();
            Response::builder()
                .header("connection", "x-internal")
                .header("x-internal", "secret")
                .header("keep-alive", "timeout=5")
                .body(full(serde_json::to_vec(&map).unwrap()))
                .unwrap()
        }
        // Answers only when the test releases it.
        "/hold" => {
            st.release.acquire().await.unwrap().forget();
            Response::new(full(st.name.clone()))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Response::new(full(st.name.clone()))
        }
        // First event now, the second only when the test releases it.
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let st2 = st.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!(
                        "data: {} first\n\n",
                        st2.name
                    )))))
                    .await;
                st2.release.acquire().await.unwrap().forget();
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!(
                        "data: {} second\n\n",
                        st2.name
                    )))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned().unwrap();
            let on_upgrade = hyper::upgrade::on(&mut req);
            let name = st.name.clone();
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{name}:{}", msg.into_text().unwrap());
                        if ws.send(reply.into()).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .body(full(""))
                .unwrap()
        }
        // The side's name, then the request body as it arrived.
        "/echo" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            match body {
                Ok(b) => Response::new(full([st.name.as_bytes(), b":", &b[..]].concat())),
                Err(_) => Response::builder().status(400).body(full("")).unwrap(),
            }
        }
        _ => Response::new(full(st.name.clone())),
    }
}

/// Answers that differ between versions on purpose. Backends whose name
/// starts with `green` are the "new version": a changed price, a changed
/// status, a slow endpoint. Every answer also carries noise (a random id and
/// a timestamp) that differs between any two answers.
async fn shadow_route(req: Request<Incoming>, path: &str, st: &BackendState) -> Response<TestBody> {
    let new = st.name.starts_with("green");
    if req
        .headers()
        .get("x-bluegreen-shadow")
        .is_some_and(|v| v == "1")
    {
        st.shadowed.fetch_add(1, Ordering::SeqCst);
    }
    static IDS: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let noise = (IDS.fetch_add(1, Ordering::SeqCst) * 7919) ^ nanos;
    let json = |code: u16, v: serde_json::Value| {
        Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(v.to_string()))
            .unwrap()
    };
    if let Some(id) = path.strip_prefix("/shadow/users/") {
        let price = if new { 12 } else { 10 };
        return json(
            200,
            serde_json::json!({"id": id, "name": format!("user {id}"), "price": price,
                "request_id": format!("{noise:x}"), "ts": nanos}),
        );
    }
    match path {
        "/shadow/same" => json(200, serde_json::json!({"ok": true, "at": nanos})),
        "/shadow/status" => json(if new { 500 } else { 200 }, serde_json::json!({"ok": !new})),
        "/shadow/slow" => {
            if new {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            json(200, serde_json::json!({"slow": true}))
        }
        "/shadow/write" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            st.writes.fetch_add(1, Ordering::SeqCst);
            *st.last_write.lock().unwrap() = String::from_utf8_lossy(&body).into_owned();
            json(201, serde_json::json!({"written": true}))
        }
        _ => json(404, serde_json::json!({"error": "not found"})),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---- the router process ---------------------------------------------------------

/// Builds a config and starts the real `bluegreen serve` process.
pub struct RouterBuilder {
    blue: Vec<SocketAddr>,
    green: Vec<SocketAddr>,
    extra_proxy: String,
    health: String,
    drain: String,
    upstream_timeout: String,
    state_dir: Option<PathBuf>,
    extra: String,
    env: Vec<(String, String)>,
    listen: Option<SocketAddr>,
    admin: String,
    state_extra: String,
}

impl RouterBuilder {
    pub fn new(blue: &[&Backend], green: &[&Backend]) -> RouterBuilder {
        RouterBuilder {
            blue: blue.iter().map(|b| b.addr).collect(),
            green: green.iter().map(|b| b.addr).collect(),
            extra_proxy: String::new(),
            health: "interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1".into(),
            drain: "5s".into(),
            upstream_timeout: "2s".into(),
            state_dir: None,
            extra: String::new(),
            env: Vec::new(),
            listen: None,
            admin: String::new(),
            state_extra: String::new(),
        }
    }

    /// The state in etcd at `endpoints` under `prefix`, as node `node`.
    pub fn etcd(mut self, endpoints: &[&str], prefix: &str, node: &str, more: &str) -> Self {
        let list = endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.state_extra = format!(
            "backend = \"etcd\"\n[state.etcd]\nendpoints = [{list}]\nprefix = \"{prefix}\"\nnode = \"{node}\"\n{more}\n"
        );
        self
    }

    /// Upstreams by address (for addresses where nothing listens).
    pub fn addrs(blue: Vec<SocketAddr>, green: Vec<SocketAddr>) -> RouterBuilder {
        RouterBuilder {
            blue,
            green,
            ..RouterBuilder::new(&[], &[])
        }
    }

    /// `proxy.listen` on this address rather than a port of its own choosing.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Extra lines for the `[admin]` table.
    pub fn admin(mut self, lines: &str) -> Self {
        self.admin.push_str(lines);
        self.admin.push('\n');
        self
    }

    /// Extra lines for the `[proxy]` table.
    pub fn proxy(mut self, lines: &str) -> Self {
        self.extra_proxy.push_str(lines);
        self.extra_proxy.push('\n');
        self
    }

    pub fn drain(mut self, d: &str) -> Self {
        self.drain = d.into();
        self
    }

    /// Raw TOML appended to the config (e.g. a `[deploy]` table).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// An environment variable for the router process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn upstream_timeout(mut self, d: &str) -> Self {
        self.upstream_timeout = d.into();
        self
    }

    pub fn health(mut self, lines: &str) -> Self {
        self.health = lines.into();
        self
    }

    /// Reuse a state dir (for restart tests).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    pub fn config_text(&self, state_dir: &Path) -> String {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[proxy]\nlisten = \"{listen}\"\npreview_listen = \"127.0.0.1:0\"\nupstream_timeout = \"{timeout}\"\n{extra}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"BG_TEST_TOKEN\"\n{admin}\n\
             [state]\ndir = \"{state}\"\n{state_extra}\n[health]\npath = \"/healthz\"\n{health}\n\n\
             [environments.blue]\nupstreams = [{blue}]\n\n[environments.green]\nupstreams = [{green}]\n\n\
             [switch]\ndrain_timeout = \"{drain}\"\n{extra_toml}\n",
            extra = self.extra_proxy,
            admin = self.admin,
            listen = self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            timeout = self.upstream_timeout,
            state = state_dir.display(),
            health = self.health,
            blue = list(&self.blue),
            green = list(&self.green),
            drain = self.drain,
            extra_toml = self.extra,
            state_extra = self.state_extra,
        )
    }

    /// Starts the router and waits for its ready line.
    pub fn start(self) -> RouterProc {
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("state"));
        let config = tmp.path().join("bluegreen.toml");
        std::fs::write(&config, self.config_text(&state_dir)).unwrap();
        RouterProc::spawn_with(config, state_dir, tmp, &self.env)
    }
}

/// A running `bluegreen serve` child process.
pub struct RouterProc {
    pub child: Child,
    pub proxy: SocketAddr,
    pub preview: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS live listener, with a `[tls]` table.
    pub https: Option<SocketAddr>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub stderr: Arc<Mutex<String>>,
    /// When false, dropping this leaves the supervised apps running.
    pub kill_apps_on_drop: bool,
    _tmp: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bluegreen")
}

impl RouterProc {
    pub fn spawn(config: PathBuf, state_dir: PathBuf, tmp: tempfile::TempDir) -> RouterProc {
        RouterProc::spawn_with(config, state_dir, tmp, &[])
    }

    pub fn spawn_with(
        config: PathBuf,
        state_dir: PathBuf,
        tmp: tempfile::TempDir,
        env: &[(String, String)],
    ) -> RouterProc {
        let mut child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("BG_TEST_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "router did not become ready; stderr:\n{}",
                    stderr.lock().unwrap()
                )
            });
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in ready line {line:?}"))
                .to_string()
        };
        RouterProc {
            proxy: field("proxy").parse().unwrap(),
            preview: field("preview").parse().unwrap(),
            admin: field("admin").parse().unwrap(),
            https: field("https").parse().ok(),
            child,
            config,
            state_dir,
            stderr,
            kill_apps_on_drop: true,
            _tmp: tmp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn preview_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.preview)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Runs the CLI against this router; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(args)
            .env("BLUEGREEN_ADMIN", self.admin_url())
            .env("BLUEGREEN_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Calls the admin API; returns status and JSON body.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.admin_url()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
        (status, json)
    }

    /// Switch through the API with the right token; panics on failure.
    pub async fn switch_to(&self, side: &str) -> serde_json::Value {
        let (status, body) = self
            .api(
                "POST",
                "/api/v1/switch",
                Some(&format!("{{\"to\":\"{side}\"}}")),
                Some(TOKEN),
            )
            .await;
        assert_eq!(status, 200, "switch to {side} failed: {body}");
        body
    }

    pub async fn status(&self) -> serde_json::Value {
        let (status, body) = self.api("GET", "/api/v1/status", None, Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until every upstream of both sides is healthy.
    pub async fn wait_all_healthy(&self) {
        wait_until(Duration::from_secs(10), "all upstreams healthy", || async {
            let s = self.status().await;
            ["blue", "green"].iter().all(|side| {
                s["sides"][side]["upstreams"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|u| u["health"] == "healthy")
            })
        })
        .await;
    }

    /// Waits until the live side has a healthy upstream.
    pub async fn wait_until_live_healthy(&self) {
        wait_until(Duration::from_secs(10), "live side healthy", || async {
            let s = self.status().await;
            let live = s["live"].as_str().unwrap().to_string();
            s["sides"][live.as_str()]["healthy"].as_u64().unwrap_or(0) > 0
        })
        .await;
    }

    /// Sends a signal by name through `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "router did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl RouterProc {
    /// Pids of the app processes the router's supervisor recorded.
    pub fn app_pids(&self) -> Vec<u32> {
        app_pids(&self.state_dir)
    }
}

/// Pids in a state dir's process table.
pub fn app_pids(state_dir: &Path) -> Vec<u32> {
    let Ok(raw) = std::fs::read(state_dir.join("processes.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
    ["blue", "green"]
        .iter()
        .flat_map(|side| {
            v["sides"][side]["procs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p["pid"].as_u64().map(|x| x as u32))
        .collect()
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Supervised apps outlive the router by design; tests must not leak them.
        if !self.kill_apps_on_drop {
            return;
        }
        for pid in self.app_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// A keep-alive HTTP/1.1 client.
pub fn h1_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge, cleartext) client.
pub fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET and return (status, body as text).
pub async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(u16, String), String> {
    let resp = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An address where nothing listens (bound, then closed), for an app the
/// router starts later: from a span below the kernel's ephemeral range (see
/// `PortSpan`), apart from etcd's.
pub fn closed_port() -> SocketAddr {
    static APP_PORTS: bluegreen_store::etcd::testing::PortSpan =
        bluegreen_store::etcd::testing::PortSpan::new(20_000, 12_000);
    SocketAddr::from(([127, 0, 0, 1], APP_PORTS.take()))
}

/// Runs curl with args; returns (exit code, stdout).
pub fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

// ---- load and deploys, shared by the tests that release under traffic ----

/// Background GETs, bounded (20,000 requests or 60 s), one every 5 ms;
/// `url_of(i)` is the i-th URL. `stop` ends it and hands back the statuses
/// seen (0 for a request that failed).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u16>>,
}

impl Traffic {
    pub fn start(url_of: impl Fn(u64) -> String + Send + 'static) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = h1_client();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen = Vec::new();
            for i in 0..20_000u64 {
                if flag.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                seen.push(get(&client, &url_of(i)).await.map(|(s, _)| s).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        });
        Traffic { stop, task }
    }

    pub async fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

impl RouterProc {
    /// Starts a deploy through the API (`body` is its JSON); it must be accepted.
    pub async fn start_deploy(&self, body: &str) {
        let (st, d) = self
            .api("POST", "/api/v1/deploys", Some(body), Some(TOKEN))
            .await;
        assert_eq!(st, 202, "{d}");
    }

    /// The current (or last) deploy record.
    pub async fn current_deploy(&self) -> serde_json::Value {
        self.api("GET", "/api/v1/deploys/current", None, Some(TOKEN))
            .await
            .1
    }

    /// Waits until the current deploy ended; its record.
    pub async fn wait_deploy_end(&self, limit: Duration) -> serde_json::Value {
        wait_until(limit, "the deploy ended", || async {
            self.current_deploy().await["outcome"]
                .as_str()
                .is_some_and(|o| o != "running")
        })
        .await;
        self.current_deploy().await
    }

    /// The CLI against this router with `token`, off the async threads.
    pub async fn cli_with_token(&self, args: &[&str], token: &str) -> (i32, String, String) {
        let admin = self.admin_url();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let token = token.to_string();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(bin())
                .args(&args)
                .env("BLUEGREEN_ADMIN", admin)
                .env("BLUEGREEN_TOKEN", token)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }
}

/// A Debian program from /usr/sbin (which a user's PATH may lack), else
/// by name.
pub fn sbin(name: &'static str) -> String {
    let path = format!("/usr/sbin/{name}");
    if Path::new(&path).exists() {
        path
    } else {
        name.to_string()
    }
}

/// SIGTERM to a router's master (which stops its workers too; a SIGKILLed
/// master leaves them serving, holding every file the test inherited),
/// SIGKILL after 10 s.
pub fn stop_gracefully(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}
