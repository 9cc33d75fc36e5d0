//! What upstreams send back, and what clients get: the upstream side of the
//! fidelity table. A scripted upstream misbehaves by path (an HTTP/1.0
//! answer with and without a length, a close or a reset after accept, a
//! partial head, 1xx first, trailers, `Connection: close`, a body longer or
//! shorter than its length, a stall mid-body); curl asks over HTTP/1.1 and
//! over HTTP/2 (h2c), and the test checks the status, the version, the
//! framing, whether the client's connection was kept, how many times the
//! upstream was asked (retries) and what the side's traffic counted.

use crate::raw::{read_request, Arrived, RawClient};
use crate::support::{wait_until, RouterBuilder, RouterProc};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An upstream that answers health checks, and every other request by its
/// path's script (when `faulty`) or with `200 NAME` (when not).
struct FaultUpstream {
    addr: SocketAddr,
    /// Every request other than health checks, as it arrived.
    seen: Arc<Mutex<Vec<Arrived>>>,
    stop: CancellationToken,
}

impl FaultUpstream {
    async fn start(name: &'static str, faulty: bool) -> FaultUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                let (seen, stop) = (seen2.clone(), stop2.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(sock, seen, name, faulty) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        FaultUpstream { addr, seen, stop }
    }

    /// How many requests for the path `target` (any method) arrived.
    fn asked(&self, target: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|a| path_of(&a.target) == target).count()
    }

    /// The requests whose target is exactly `target`, as they arrived.
    fn arrived(&self, target: &str) -> Vec<Arrived> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|a| a.target == target)
            .cloned()
            .collect()
    }
}

/// The path of a request target (the scripts go by path).
fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The scripts, by path. Each either answers and keeps the connection
/// (`true`) or ends it (`false`).
async fn serve(
    mut sock: TcpStream,
    seen: Arc<Mutex<Vec<Arrived>>>,
    name: &'static str,
    faulty: bool,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        if req.target == "/healthz" {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if sock.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        let path = path_of(&req.target).to_string();
        seen.lock().unwrap().push(req);
        if !faulty {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                name.len()
            );
            if sock.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let (bytes, keep): (&[u8], bool) = match path.as_str() {
            "/h10-length" => (b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
            "/h10-close" => (b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nno length at all", false),
            "/close" => (b"", false),
            "/reset" => {
                // SO_LINGER 0: the close sends a RST. (Deprecated because a
                // non-zero linger blocks on drop; zero never does.)
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
                return;
            }
            "/partial-head" => (b"HTTP/1.1 200 OK\r\ncontent-le", false),
            "/early-hints" => (
                b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                true,
            ),
            "/trailers" => (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n",
                true,
            ),
            "/conn-close" => (
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                false,
            ),
            "/long-body" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA", true),
            "/short-body" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", false),
            "/stall" => {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                    .await;
                std::future::pending::<()>().await;
                return;
            }
            _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", true),
        };
        if sock.write_all(bytes).await.is_err() || !keep {
            return;
        }
    }
}

/// What curl saw of one exchange (over HTTP/1.1, two transfers of the same
/// URL on one connection where it could keep it).
#[derive(Debug)]
struct Seen {
    /// curl's exit code.
    code: i32,
    /// `%{http_version}` and `%{http_code}` of the first transfer.
    version: String,
    status: u16,
    body: String,
    /// Connections opened for the second transfer (0: the first was kept).
    second_connects: Option<u32>,
    /// The second transfer's status (0: none).
    second_status: u16,
    /// Response headers of the first transfer, lower-cased.
    headers: String,
    /// What curl said on stderr.
    stderr: String,
}

async fn curl_twice(url: String, h2: bool, method: &'static str, max_time: &'static str) -> Seen {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body");
        let heads = dir.path().join("heads");
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", max_time, "-X", method]);
        cmd.arg(if h2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        });
        cmd.args(["-D", heads.to_str().unwrap()]);
        cmd.args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"]);
        cmd.args(["-o", body.to_str().unwrap(), &url]);
        // curl 7.88 fails a second stream on a reused h2c prior-knowledge
        // connection ("Error in the HTTP2 framing layer"; nghttp's two
        // streams on one connection go through): over HTTP/2 one transfer.
        if !h2 {
            cmd.args(["-o", "/dev/null", &url]);
        }
        let out = cmd.output().expect("curl is installed");
        let lines = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut rows = lines.lines().map(|l| l.split(' ').collect::<Vec<_>>());
        let first = rows.next().unwrap_or_default();
        let second = rows.next();
        Seen {
            code: out.status.code().unwrap_or(-1),
            version: first.first().copied().unwrap_or("").to_string(),
            status: first.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            body: std::fs::read_to_string(&body).unwrap_or_default(),
            second_connects: second.as_ref().and_then(|r| r.get(2)?.parse().ok()),
            second_status: second
                .as_ref()
                .and_then(|r| r.get(1)?.parse().ok())
                .unwrap_or(0),
            headers: std::fs::read_to_string(&heads)
                .unwrap_or_default()
                .to_ascii_lowercase(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn side_traffic(metrics: &str, status_class: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("bluegreen_requests_total{")
                && l.contains("side=\"blue\"")
                && l.contains("listener=\"live\"")
                && l.contains(&format!("class=\"{status_class}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn metrics(router: &RouterProc) -> String {
    let url = format!("{}/metrics", router.admin_url());
    let auth = format!("authorization: Bearer {}", crate::support::TOKEN);
    tokio::task::spawn_blocking(move || crate::support::curl(&["-H", &auth, &url]).1)
        .await
        .unwrap()
}

/// Every row of the table, over HTTP/1.1 and HTTP/2, against one upstream
/// (so a retry can only go to the same upstream, on a new connection).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_conformance_table() {
    let up = FaultUpstream::start("blue", true).await;
    let other = FaultUpstream::start("green", false).await;
    let router = RouterBuilder::addrs(vec![up.addr], vec![other.addr])
        // Checks rarely, and many failures before passive marking: this
        // test looks at each fault alone.
        .health("interval = \"60s\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 100")
        .start();
    router.wait_all_healthy().await;
    let mut table = vec![
        "| upstream sends | client | status | version | body | client conn kept | upstream asked (HTTP/1.1: 2 transfers) | curl |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for h2 in [false, true] {
        let client = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        let want_version = if h2 { "2" } else { "1.1" };
        for (path, method, max_time) in [
            ("/h10-length", "GET", "10"),
            ("/h10-close", "GET", "10"),
            ("/close", "GET", "10"),
            ("/close", "POST", "10"),
            ("/reset", "GET", "10"),
            ("/reset", "DELETE", "10"),
            ("/partial-head", "GET", "10"),
            ("/early-hints", "GET", "10"),
            ("/trailers", "GET", "10"),
            ("/conn-close", "GET", "10"),
            ("/long-body", "GET", "10"),
            ("/short-body", "GET", "10"),
            ("/stall", "GET", "2"),
        ] {
            let before = up.asked(path);
            let seen = curl_twice(router.url(path), h2, method, max_time).await;
            let asked = up.asked(path) - before;
            table.push(format!(
                "| `{path}` | {client} {method} | {} | {} | {:?} | {} | {asked} | {} |",
                seen.status,
                seen.version,
                seen.body,
                match seen.second_connects {
                    Some(0) => "yes",
                    Some(_) => "no",
                    None => "-",
                },
                seen.stderr.trim().replace('\n', "; "),
            ));
            let what = format!("{client} {method} {path}: {seen:?}");
            match path {
                // An HTTP/1.0 answer is the upstream's business: the client
                // gets our version, its whole body, and keeps its connection.
                "/h10-length" | "/h10-close" | "/early-hints" | "/trailers" | "/conn-close" => {
                    assert_eq!(seen.code, 0, "{what}");
                    assert_eq!(seen.status, 200, "{what}");
                    assert_eq!(seen.version, want_version, "{what}");
                    if !h2 {
                        assert_eq!(seen.second_connects, Some(0), "kept alive: {what}");
                        assert_eq!(seen.second_status, 200, "{what}");
                    }
                    let body = match path {
                        "/h10-length" | "/trailers" => "hello",
                        "/h10-close" => "no length at all",
                        _ => "ok",
                    };
                    assert_eq!(seen.body, body, "{what}");
                    assert!(!seen.headers.contains("http/1.0"), "{what}");
                    assert!(
                        !seen.headers.contains("connection: close"),
                        "the upstream's close is not the client's: {what}"
                    );
                }
                // Closed or reset before any answer: an idempotent request
                // goes once more (the same upstream: it has no other), a
                // POST never does. Both times it failed, so 502.
                "/close" | "/reset" | "/partial-head" => {
                    assert_eq!(seen.status, 502, "{what}");
                    assert_eq!(seen.version, want_version, "{what}");
                    let per_transfer = if method == "POST" { 1 } else { 2 };
                    let transfers = if h2 { 1 } else { 2 };
                    assert_eq!(asked, transfers * per_transfer, "{what}");
                }
                // The extra bytes after the stated length are dropped.
                "/long-body" => {
                    assert_eq!((seen.code, seen.status), (0, 200), "{what}");
                    assert_eq!(seen.body, "hello", "{what}");
                    if !h2 {
                        assert_eq!(seen.second_connects, Some(0), "{what}");
                    }
                }
                // A body cut short cannot be completed: the client sees the
                // cut (curl: partial file / stream error), never a clean end.
                // (Over HTTP/2 the stream's reset may reach curl before it
                // showed the head: then it reports the reset alone.)
                "/short-body" => {
                    assert_ne!(seen.code, 0, "a cut body is not a complete answer: {what}");
                    if !h2 || seen.status != 0 {
                        assert_eq!(seen.status, 200, "{what}");
                        assert!("hello".starts_with(&seen.body), "{what}");
                    }
                }
                // A stall mid-body is passed on as a stall: the client's
                // own timeout decides (curl exit 28).
                "/stall" => {
                    assert_eq!(seen.status, 200, "{what}");
                    assert_eq!(seen.code, 28, "{what}");
                    assert_eq!(seen.body, "hello", "{what}");
                }
                _ => unreachable!(),
            }
        }
    }
    println!("{}", table.join("\n"));
    // Each failed exchange counted once as the side's 5xx, a retry not
    // twice: /close GET+POST, /reset GET+DELETE, /partial-head; two
    // transfers each over HTTP/1.1, one over HTTP/2.
    let m = metrics(&router).await;
    assert_eq!(side_traffic(&m, "5xx"), 3 * 5, "{m}");
}

/// An HTTP/1.0 upstream (Python's `http.server`) behind an HTTP/1.1 client:
/// `HTTP/1.1` on the status line, the connection kept for the next request,
/// a body without length framed chunked.
#[tokio::test(flavor = "multi_thread")]
async fn an_http10_upstream_does_not_leak_its_version() {
    let up = FaultUpstream::start("blue", true).await;
    let other = FaultUpstream::start("green", false).await;
    let router = RouterBuilder::addrs(vec![up.addr], vec![other.addr]).start();
    router.wait_all_healthy().await;
    let mut c = RawClient::connect(router.proxy).await;
    for path in ["/h10-length", "/h10-close", "/h10-length"] {
        c.send(format!("GET {path} HTTP/1.1\r\nhost: app.test\r\n\r\n").as_bytes())
            .await;
        let r = c
            .response(false)
            .await
            .expect("an answer on the same connection");
        assert_eq!((r.status, r.minor), (200, 1), "{path}: {r:?}");
        assert_eq!(r.header("connection"), None, "{path}: {r:?}");
        if path == "/h10-close" {
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
            assert_eq!(r.text(), "no length at all");
        } else {
            assert_eq!(r.text(), "hello");
        }
    }
    // An HTTP/1.0 client gets HTTP/1.0, and a close-delimited body.
    let mut c = RawClient::connect(router.proxy).await;
    c.send(b"GET /h10-close HTTP/1.0\r\nhost: app.test\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.minor), (200, 0), "{r:?}");
    assert_eq!(r.text(), "no length at all");
}

/// With two upstreams, a GET that one of them closes without answering goes
/// to the other and succeeds; a POST is never sent twice; and an upstream
/// that keeps failing requests is marked down (passive health) although its
/// health checks pass, and gets no more traffic until they pass again.
#[tokio::test(flavor = "multi_thread")]
async fn idempotent_requests_are_retried_elsewhere_and_failing_upstreams_marked_down() {
    let bad = FaultUpstream::start("bad", true).await;
    let good = FaultUpstream::start("good", false).await;
    let green = FaultUpstream::start("green", false).await;
    let router = RouterBuilder::addrs(vec![bad.addr, good.addr], vec![green.addr])
        // A long check interval: only failed requests can mark it down.
        .health(
            "interval = \"60s\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 3",
        )
        .start();
    router.wait_all_healthy().await;
    // GETs, HEADs, PUTs, DELETEs (idempotent): every one answered by `good`.
    for (i, method) in ["GET", "HEAD", "PUT", "DELETE", "GET", "OPTIONS"]
        .into_iter()
        .enumerate()
    {
        let seen = curl_twice(router.url("/close"), i % 2 == 1, method, "10").await;
        assert_eq!(seen.status, 200, "{method}: {seen:?}");
        if method != "HEAD" {
            assert_eq!(seen.body, "good", "{method}: {seen:?}");
        }
        if bad.asked("/close") >= 3 {
            break;
        }
    }
    // Three in a row failed at `bad`: it is down now, its checks still pass.
    let status = router.status().await;
    let blue = &status["sides"]["blue"]["upstreams"];
    let row = blue
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == bad.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(row["health"], "unhealthy", "{status:#}");
    assert!(
        row["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("in a row got no answer")),
        "{row}"
    );
    let asked = bad.asked("/close");
    for _ in 0..10 {
        let seen = curl_twice(router.url("/close"), false, "POST", "10").await;
        assert_eq!((seen.status, seen.body.as_str()), (200, "good"));
    }
    assert_eq!(bad.asked("/close"), asked, "a down upstream gets nothing");
}

/// A POST that the only upstream closes is answered 502, sent once; it is
/// never counted as the client's fault, and the next POST still goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_post_the_upstream_closed_is_never_sent_twice() {
    let bad = FaultUpstream::start("bad", true).await;
    let green = FaultUpstream::start("green", false).await;
    let router = RouterBuilder::addrs(vec![bad.addr], vec![green.addr])
        .health("interval = \"60s\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 100")
        .start();
    router.wait_all_healthy().await;
    for n in 1..=3 {
        let seen = curl_twice(router.url("/reset"), false, "POST", "10").await;
        assert_eq!(seen.status, 502, "{seen:?}");
        assert!(
            seen.headers.contains("x-bluegreen-error: upstream_error"),
            "{seen:?}"
        );
        assert_eq!(bad.asked("/reset"), 2 * n, "one arrival per POST");
    }
    wait_until(Duration::from_secs(5), "the failures counted", || async {
        side_traffic(&metrics(&router).await, "5xx") == 6
    })
    .await;
}

/// A request sent again after its upstream closed without answering
/// arrives exactly as the first time: method, target with its query,
/// every header in order (repeated ones too, the request id included),
/// version and (empty) body. Only the upstream differs.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_sent_again_arrives_as_it_was_sent_the_first_time() {
    let bad = FaultUpstream::start("bad", true).await;
    let good = FaultUpstream::start("good", false).await;
    let green = FaultUpstream::start("green", false).await;
    let router = RouterBuilder::addrs(vec![bad.addr, good.addr], vec![green.addr])
        .health("interval = \"60s\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 100")
        .start();
    router.wait_all_healthy().await;
    let mut compared = 0;
    for (i, method) in ["GET", "DELETE", "OPTIONS", "GET", "PUT", "HEAD"]
        .into_iter()
        .enumerate()
    {
        let target = format!("/close?n={i}&q=a%20b&q=%C3%A9");
        let mut c = RawClient::connect(router.proxy).await;
        c.send(
            format!(
                "{method} {target} HTTP/1.1\r\nhost: shop.test\r\nx-a: 1\r\nX-A: 2\r\ncookie: s=1; t=2\r\naccept: */*\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let r = c.response(method == "HEAD").await.expect("an answer");
        assert_eq!(r.status, 200, "{method} {target}: {r:?}");
        let (first, again) = (bad.arrived(&target), good.arrived(&target));
        if first.is_empty() {
            continue; // round robin sent it to the good one first
        }
        assert_eq!((first.len(), again.len()), (1, 1), "{method} {target}");
        assert_eq!(first[0], again[0], "{method} {target}");
        assert_eq!(first[0].all("x-a"), vec!["1", "2"]);
        assert!(first[0].one("x-request-id").is_some());
        compared += 1;
    }
    assert!(compared >= 2, "only {compared} requests were sent again");
}
