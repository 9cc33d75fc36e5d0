//! Request fidelity: one table of varied requests sent through every path
//! that forwards a request (first attempt, retry, preview, shadow copy,
//! replay), each compared with what the upstream received byte for byte,
//! allowing only the documented rewrites (docs/architecture.md, "What the
//! upstream receives").

use crate::raw::{Arrived, RawBackend, RawClient};
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A request as a client sends it.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub target: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Sent with `Transfer-Encoding: chunked` (HTTP/1.1 only), in this many chunks.
    pub chunks: usize,
}

impl Case {
    fn new(name: &'static str, method: &'static str, target: &'static str) -> Case {
        Case {
            name,
            method,
            target,
            headers: Vec::new(),
            body: Vec::new(),
            chunks: 0,
        }
    }

    fn header(mut self, k: &'static str, v: &str) -> Case {
        self.headers.push((k, v.to_string()));
        self
    }

    fn body(mut self, b: impl Into<Vec<u8>>) -> Case {
        self.body = b.into();
        self
    }

    fn chunked(mut self, n: usize) -> Case {
        self.chunks = n;
        self
    }

    /// The HTTP/1.1 bytes, with `Host: host`.
    pub fn h1_bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut bytes;
        if self.chunks > 0 {
            out.push_str("Transfer-Encoding: chunked\r\n\r\n");
            bytes = out.into_bytes();
            let size = self.body.len().div_ceil(self.chunks).max(1);
            for piece in self.body.chunks(size) {
                bytes.extend(format!("{:x};ext=1\r\n", piece.len()).into_bytes());
                bytes.extend_from_slice(piece);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            if !self.body.is_empty() || matches!(self.method, "POST" | "PUT" | "PATCH") {
                out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
            }
            out.push_str("\r\n");
            bytes = out.into_bytes();
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The table: methods, encoded paths and queries, repeated and odd headers,
/// bodies from empty to 256 KiB, chunked and not.
pub fn cases() -> Vec<Case> {
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    vec![
        Case::new("plain get", "GET", "/foo/bar?x=1"),
        Case::new(
            "encoded path and query",
            "GET",
            "/a%2Fb/caf%C3%A9/?q=a+b&q=%E2%9C%93&empty=&flag",
        )
        .header("Accept", "application/json, text/*;q=0.5"),
        Case::new("repeated headers keep their order", "GET", "/repeat")
            .header("X-Tag", "one")
            .header("X-Other", "between")
            .header("X-Tag", "two, three")
            .header("Accept-Encoding", "gzip, br")
            .header("X-Empty", ""),
        Case::new("odd but valid header values", "GET", "/values")
            .header("X-Spaces", "a  b\tc")
            .header("X-Quote", "\"quoted, with comma\"")
            .header("X-Long", &"v".repeat(6000))
            .header("User-Agent", "fidelity/1.0 (+test)"),
        Case::new("head", "HEAD", "/head?x=%2F"),
        Case::new("options", "OPTIONS", "/opts"),
        Case::new("delete", "DELETE", "/items/42?soft=true").header("If-Match", "\"abc\""),
        Case::new("post small body", "POST", "/submit?id=7")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", "a=1; b=2")
            .body("name=caf%C3%A9&n=1"),
        Case::new("post empty body", "POST", "/empty"),
        Case::new("put binary body", "PUT", "/blob/1")
            .header("Content-Type", "application/octet-stream")
            .body((0u8..=255).collect::<Vec<u8>>()),
        Case::new("post large body", "POST", "/upload").body(big.clone()),
        Case::new("patch json", "PATCH", "/users/7")
            .header("Content-Type", "application/json")
            .body(r#"{"name":"Zoë","tags":["a","b"],"n":1.5e3}"#),
        Case::new("chunked body", "POST", "/chunked?c=1")
            .body(big[..70_000].to_vec())
            .chunked(3),
        Case::new("request id kept", "GET", "/rid").header("X-Request-Id", "req-1234_abc.def:9"),
    ]
}

/// What may differ between a client's request and its arrival: headers the
/// router owns (forwarding, request id, framing) and the `Host` it sets.
const ROUTER_OWNED: [&str; 8] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    "content-length",
    "transfer-encoding",
];

/// Checks that `got` is `case` plus only the documented rewrites; `extra`
/// names headers the path adds on purpose (`x-bluegreen-shadow`, ...).
pub fn assert_same(case: &Case, got: &Arrived, host: &str, extra: &[(&str, &str)], path: &str) {
    let ctx = format!("{path}: case {:?}", case.name);
    assert_eq!(got.method, case.method, "{ctx}: method");
    assert_eq!(got.target, case.target, "{ctx}: target");
    assert_eq!(got.minor, 1, "{ctx}: version");
    assert!(
        same_body(&got.body, &case.body),
        "{ctx}: body: {}",
        body_diff(&got.body, &case.body)
    );
    // Every client header arrives, values and order per name unchanged.
    for (name, _) in &case.headers {
        let lname = name.to_ascii_lowercase();
        if lname == "x-request-id" {
            continue;
        }
        let sent: Vec<String> = case
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect();
        let arrived = got.all(&lname);
        let joined_cookie = lname == "cookie" && arrived.len() == 1;
        if !joined_cookie {
            assert_eq!(arrived, sent, "{ctx}: header {lname}");
        }
    }
    // Nothing else arrives but what the router owns and what this path adds.
    for (name, value) in &got.headers {
        let from_client = case
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name));
        let added = extra.iter().any(|(k, _)| k == name);
        assert!(
            from_client || added || ROUTER_OWNED.contains(&name.as_str()),
            "{ctx}: unexpected header {name}: {:?}",
            String::from_utf8_lossy(value)
        );
    }
    for (k, v) in extra {
        assert_eq!(got.one(k).as_deref(), Some(*v), "{ctx}: {k}");
    }
    assert_eq!(got.one("host").as_deref(), Some(host), "{ctx}: host");
    assert_eq!(
        got.one("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{ctx}: x-forwarded-for"
    );
    assert_eq!(
        got.one("x-forwarded-proto").as_deref(),
        Some("http"),
        "{ctx}: x-forwarded-proto"
    );
    assert_eq!(
        got.one("x-forwarded-host").as_deref(),
        Some(host),
        "{ctx}: x-forwarded-host"
    );
    let rid = got.one("x-request-id").expect("x-request-id");
    match case
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
    {
        Some((_, mine)) => assert_eq!(&rid, mine, "{ctx}: client's valid request id"),
        None => assert_eq!(rid.len(), 32, "{ctx}: generated request id"),
    }
    if got.chunked {
        assert!(
            got.one("content-length").is_none(),
            "{ctx}: chunked with a length"
        );
    } else if let Some(len) = got.one("content-length") {
        assert_eq!(len, case.body.len().to_string(), "{ctx}: content-length");
    }
}

/// Sends every case over one keep-alive HTTP/1.1 connection; all must get 200.
async fn send_h1(addr: std::net::SocketAddr, cases: &[Case], host: &str) {
    let mut client = RawClient::connect(addr).await;
    for case in cases {
        client.send(&case.h1_bytes(host)).await;
        let resp = client
            .response(case.method == "HEAD")
            .await
            .unwrap_or_else(|| panic!("no response to {:?}", case.name));
        assert_eq!(resp.status, 200, "{:?}: {}", case.name, resp.text());
    }
}

/// Sends every case with HTTP/2 (prior knowledge); all must get 200.
async fn send_h2(addr: std::net::SocketAddr, cases: &[Case]) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for case in cases {
        let mut req = http::Request::builder()
            .method(case.method)
            .uri(format!("http://{addr}{}", case.target));
        for (k, v) in &case.headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(case.body.clone()))).unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        assert_eq!(status, 200, "{:?} over HTTP/2", case.name);
    }
}

/// HTTP/2 has no chunked framing and no empty header values on the wire.
fn h2_cases() -> Vec<Case> {
    cases()
        .into_iter()
        .map(|mut c| {
            c.chunks = 0;
            c
        })
        .collect()
}

async fn router_for(blue: &[std::net::SocketAddr], green: &[std::net::SocketAddr]) -> RouterProc {
    let router = RouterBuilder::addrs(blue.to_vec(), green.to_vec()).start();
    router.wait_until_live_healthy().await;
    router
}

#[tokio::test(flavor = "multi_thread")]
async fn first_attempt_reaches_the_app_exactly_as_sent_h1_and_h2() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = router_for(&[blue.addr], &[green.addr]).await;
    let host = "shop.example:8080";
    let table = cases();
    send_h1(router.proxy, &table, host).await;
    let got = blue.wait_for(table.len()).await;
    for (case, arrived) in table.iter().zip(&got) {
        assert_same(case, arrived, host, &[], "h1 first attempt");
    }
    blue.clear();
    let table = h2_cases();
    send_h2(router.proxy, &table).await;
    let got = blue.wait_for(table.len()).await;
    let authority = router.proxy.to_string();
    for (case, arrived) in table.iter().zip(&got) {
        assert_same(case, arrived, &authority, &[], "h2 first attempt");
    }
    assert!(green.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_a_dead_upstream_resends_the_same_request_and_skips_it_after() {
    let alive = RawBackend::start("b").await;
    let doomed = RawBackend::start("a").await;
    let green = RawBackend::start("green").await;
    // Checked once at start, then not again for an hour: only passive marking
    // can take the dead upstream out of rotation.
    let router = RouterBuilder::addrs(vec![doomed.addr, alive.addr], vec![green.addr])
        .health("interval = \"1h\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .start();
    router.wait_all_healthy().await;
    drop(doomed);
    wait_until(Duration::from_secs(5), "dead upstream refuses", || async {
        tokio::net::TcpStream::connect(
            router.status().await["sides"]["blue"]["upstreams"][0]["address"]
                .as_str()
                .unwrap(),
        )
        .await
        .is_err()
    })
    .await;
    let host = "retry.example";
    // Nothing was sent when connecting failed, so any request can go to the
    // next upstream, body and all: the first one, the dead upstream's only
    // request, is a streamed chunked upload.
    let mut table = cases();
    let chunked = table.iter().position(|c| c.chunks > 0).unwrap();
    table.rotate_left(chunked);
    for _ in 0..2 {
        send_h1(router.proxy, &table, host).await;
    }
    let got = alive.wait_for(2 * table.len()).await;
    for (case, arrived) in table.iter().chain(&table).zip(&got) {
        assert_same(case, arrived, host, &[], "retry");
    }
    let status = router.status().await;
    let dead = &status["sides"]["blue"]["upstreams"][0];
    assert_eq!(dead["health"], "unhealthy", "{status}");
    // Tried once, marked down, never tried again.
    let metrics = router_metrics(&router).await;
    let failures = metrics
        .lines()
        .find(|l| {
            l.starts_with("bluegreen_upstream_errors_total")
                && l.contains(dead["address"].as_str().unwrap())
        })
        .unwrap_or_else(|| panic!("no error count for the dead upstream:\n{metrics}"));
    assert!(failures.ends_with(" 1"), "{failures}");
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_reaches_the_idle_side_exactly_as_sent() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr]).start();
    router.wait_all_healthy().await;
    let host = "preview.example";
    let table = cases();
    send_h1(router.preview, &table, host).await;
    let got = green.wait_for(table.len()).await;
    for (case, arrived) in table.iter().zip(&got) {
        assert_same(case, arrived, host, &[], "preview");
    }
    assert!(blue.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_copies_reach_the_idle_side_as_the_live_side_got_them() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra("[shadow]\nmax_request_body = 1048576\nmethods = [\"GET\", \"HEAD\", \"OPTIONS\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\n")
        .start();
    router.wait_all_healthy().await;
    let (code, body) = router
        .api(
            "POST",
            "/api/v1/shadow/start",
            Some(r#"{"percent": 100}"#),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let host = "shadow.example";
    // Chunked bodies are not mirrored (their length is unknown up front).
    let table: Vec<Case> = cases().into_iter().filter(|c| c.chunks == 0).collect();
    send_h1(router.proxy, &table, host).await;
    let live = blue.wait_for(table.len()).await;
    let copies = green.wait_for(table.len()).await;
    for case in &table {
        let l = live
            .iter()
            .find(|a| a.target == case.target && a.method == case.method)
            .unwrap();
        assert_same(case, l, host, &[], "live (shadowed)");
        let c = copies
            .iter()
            .find(|a| a.target == case.target && a.method == case.method)
            .unwrap_or_else(|| panic!("no shadow copy of {:?}", case.name));
        assert_same(case, c, host, &[("x-bluegreen-shadow", "1")], "shadow copy");
        assert_eq!(
            c.one("x-request-id"),
            l.one("x-request-id"),
            "same request id"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_requests_reach_the_app_as_recorded() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr]).start();
    router.wait_all_healthy().await;
    // A chunked body has no length up front, so it is recorded without it.
    let table: Vec<Case> = cases().into_iter().filter(|c| c.chunks == 0).collect();
    let file = record_table(&router, "fidelity.jsonl", &table).await;
    let (code, out, err) = router.cli(&[
        "replay",
        &file,
        "--target",
        "green",
        "--speed",
        "max",
        "--methods",
        "GET,HEAD,OPTIONS,POST,PUT,PATCH,DELETE",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_replayed(&table, &green.wait_for(table.len()).await, "replay");
}

/// Records `table` sent through the live listener into recording `name`;
/// returns the file's path.
async fn record_table(router: &RouterProc, name: &str, table: &[Case]) -> String {
    let start = format!(r#"{{"to": "{name}", "max_body": 1048576}}"#);
    let (code, body) = router
        .api("POST", "/api/v1/record/start", Some(&start), Some(TOKEN))
        .await;
    assert_eq!(code, 200, "{body}");
    send_h1(router.proxy, table, "recorded.example").await;
    let (code, body) = router
        .api("POST", "/api/v1/record/stop", None, Some(TOKEN))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["written"], table.len() as u64, "{body}");
    body["path"]
        .as_str()
        .expect("the recording's file")
        .to_string()
}

/// Each recorded case arrived once more, body and headers as recorded, with
/// `X-Bluegreen-Replay: 1` (straight to the side's upstream: its Host, and no
/// forwarding headers but what the recording had). Cookies are redacted in
/// recordings, so never replayed.
fn assert_replayed(table: &[Case], got: &[Arrived], path: &str) {
    for case in table {
        let a = got
            .iter()
            .find(|a| a.target == case.target && a.method == case.method)
            .unwrap_or_else(|| panic!("{path}: {:?} not replayed", case.name));
        let ctx = format!("{path}: case {:?}", case.name);
        assert!(
            same_body(&a.body, &case.body),
            "{ctx}: {}",
            body_diff(&a.body, &case.body)
        );
        assert_eq!(a.one("x-bluegreen-replay").as_deref(), Some("1"), "{ctx}");
        for (name, value) in &case.headers {
            if !name.eq_ignore_ascii_case("cookie") {
                assert!(
                    a.all(&name.to_ascii_lowercase()).contains(value),
                    "{ctx}: {name}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_warm_step_replays_recorded_traffic_to_the_idle_side_as_recorded() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let toml = format!(
        "[deploy]\n[deploy.hooks]\ndeploy = \"true\"\n\
         [deploy.bake]\nduration = \"200ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n\
         [deploy.warm]\nfile = \"{}\"\nmethods = [\"GET\", \"HEAD\", \"OPTIONS\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\n",
        state.join("records").join("warm.jsonl").display()
    );
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .state_dir(&state)
        .extra(&toml)
        .start();
    router.wait_all_healthy().await;
    let table: Vec<Case> = cases().into_iter().filter(|c| c.chunks == 0).collect();
    record_table(&router, "warm.jsonl", &table).await;
    green.clear();
    let (code, out, err) = router.cli(&["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_replayed(&table, &green.wait_for(table.len()).await, "warm step");
}

fn same_body(a: &[u8], b: &[u8]) -> bool {
    a == b
}

/// Where two bodies part, without printing them whole.
fn body_diff(got: &[u8], sent: &[u8]) -> String {
    let at = got.iter().zip(sent).position(|(x, y)| x != y);
    format!(
        "{} bytes arrived, {} sent, first difference at {at:?}",
        got.len(),
        sent.len()
    )
}

/// The metrics text, scraped with the token.
pub async fn router_metrics(router: &RouterProc) -> String {
    let (code, body) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
    assert_eq!(code, 200);
    body.as_str().unwrap_or_default().to_string()
}
