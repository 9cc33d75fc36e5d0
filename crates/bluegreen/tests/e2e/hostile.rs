//! Hostile input on raw sockets: request framing and smuggling, header and
//! Host abuse, bad upstream answers. Each case states the status the client
//! gets and exactly what reached the upstream (often: nothing).

use crate::raw::{exchange, RawBackend, RawClient};
use crate::support::*;

/// What the upstream must have received for a case.
enum Arrives {
    /// Nothing: refused at the edge.
    Nothing,
    /// These (method, target, body) requests, in order.
    Requests(Vec<(&'static str, &'static str, &'static [u8])>),
}

struct Hostile {
    name: &'static str,
    bytes: Vec<u8>,
    /// Status of each response the client reads, in order.
    statuses: Vec<u16>,
    arrives: Arrives,
}

fn case(name: &'static str, bytes: &str, statuses: &[u16], arrives: Arrives) -> Hostile {
    Hostile {
        name,
        bytes: bytes.as_bytes().to_vec(),
        statuses: statuses.to_vec(),
        arrives,
    }
}

use Arrives::{Nothing, Requests};

fn table() -> Vec<Hostile> {
    vec![
        // ---- framing and smuggling
        // Read as chunked (RFC 9112 §6.3), and the connection is closed after
        // the answer, so what followed is never read as a request.
        case("CL and TE together", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", &[200], Requests(vec![("POST", "/a", b"")])),
        case("TE then CL", "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", &[200], Requests(vec![("POST", "/b", b"abc")])),
        case("TE obfuscated with a prefix", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE chunked not last", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("space before the colon", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("two different Content-Lengths", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", &[400], Nothing),
        case("Content-Length with a sign", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", &[400], Nothing),
        case("Content-Length in hex", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\nabc", &[400], Nothing),
        case("Content-Length overflows", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\nabc", &[400], Nothing),
        case("oversized chunk size", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n", &[400], Nothing),
        case("malformed chunk size", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", &[400], Nothing),
        case("chunk extensions are framing only", "POST /ext HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value;q=\"x\"\r\nhello\r\n0\r\n\r\n", &[200], Requests(vec![("POST", "/ext", b"hello")])),
        case("pipelined requests with bodies", "POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcPOST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nwxyzGET /three HTTP/1.1\r\nHost: h\r\n\r\n", &[200, 200, 200], Requests(vec![("POST", "/one", b"abc"), ("POST", "/two", b"wxyz"), ("GET", "/three", b"")])),
        case("bare LF line endings", "GET /lf HTTP/1.1\nHost: h\n\n", &[200], Requests(vec![("GET", "/lf", b"")])),
        case("obs-fold", "GET /fold HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", &[400], Nothing),
        case("NUL in a header value", "GET /nul HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n", &[400], Nothing),
        case("CR in a header value", "GET /cr HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", &[400], Nothing),
        case("garbage request line", "HELLO THERE\r\n\r\n", &[400], Nothing),
        case("space in the target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", &[400], Nothing),
        // ---- Host and targets
        case("two Host headers", "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", &[400], Nothing),
        case("no Host on HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", &[400], Nothing),
        case("invalid Host", "GET / HTTP/1.1\r\nHost: a b.example\r\n\r\n", &[400], Nothing),
        case("Host with user information", "GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n", &[400], Nothing),
        case("absolute-form target", "GET http://target.example/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n", &[200], Requests(vec![("GET", "/x?y=1", b"")])),
        case("HTTP/1.0 without Host", "GET /old HTTP/1.0\r\n\r\n", &[200], Requests(vec![("GET", "/old", b"")])),
        case("CONNECT", "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", &[405], Nothing),
        // ---- upgrades and hop-by-hop abuse
        case("h2c upgrade", "GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", &[200], Requests(vec![("GET", "/h2c", b"")])),
        case("Connection naming end-to-end headers", "GET /conn HTTP/1.1\r\nHost: h\r\nConnection: close, Host, X-Forwarded-For, X-Real-IP, X-Request-Id, Authorization\r\nAuthorization: Bearer x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n", &[200], Requests(vec![("GET", "/conn", b"")])),
        case("forged shadow and replay marks", "GET /forged HTTP/1.1\r\nHost: h\r\nX-Bluegreen-Shadow: 1\r\nX-Bluegreen-Replay: 1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Request-Id: bad id with spaces\r\n\r\n", &[200], Requests(vec![("GET", "/forged", b"")])),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_the_right_status_and_reach_the_app_only_as_documented() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr]).start();
    router.wait_until_live_healthy().await;
    let cases = table();
    let mut failures = Vec::new();
    for c in &cases {
        blue.clear();
        let mut client = RawClient::connect(router.proxy).await;
        client.send(&c.bytes).await;
        let mut got = Vec::new();
        for _ in &c.statuses {
            match client.response(c.bytes.starts_with(b"HEAD")).await {
                Some(r) => got.push(r.status),
                None => break,
            }
        }
        if got != c.statuses {
            failures.push(format!(
                "{}: statuses {got:?}, expected {:?}",
                c.name, c.statuses
            ));
            continue;
        }
        if c.bytes.windows(9).any(|w| w == b"smuggled ") && !client.closed().await {
            failures.push(format!(
                "{}: connection left open after an ambiguous body",
                c.name
            ));
        }
        let arrived = match &c.arrives {
            Nothing => {
                // Give a request that slipped through the time to arrive.
                let probe = exchange(router.proxy, b"GET /probe HTTP/1.1\r\nHost: h\r\n\r\n").await;
                assert_eq!(probe.map(|p| p.status), Some(200), "{}: probe", c.name);
                blue.wait_for(1).await
            }
            Requests(want) => blue.wait_for(want.len()).await,
        };
        let seen: Vec<(String, String, Vec<u8>)> = arrived
            .iter()
            .map(|a| (a.method.clone(), a.target.clone(), a.body.clone()))
            .collect();
        let want: Vec<(String, String, Vec<u8>)> = match &c.arrives {
            Nothing => vec![("GET".into(), "/probe".into(), vec![])],
            Requests(w) => w
                .iter()
                .map(|(m, t, b)| (m.to_string(), t.to_string(), b.to_vec()))
                .collect(),
        };
        if seen != want {
            failures.push(format!(
                "{}: upstream got {seen:?}, expected {want:?}",
                c.name
            ));
            continue;
        }
        // Whatever arrived carries no smuggling material.
        for a in &arrived {
            let both =
                !a.all("content-length").is_empty() && !a.all("transfer-encoding").is_empty();
            assert!(!both, "{}: CL and TE both reached the app: {a:?}", c.name);
            for forbidden in [
                "upgrade",
                "http2-settings",
                "x-bluegreen-shadow",
                "x-bluegreen-replay",
                "forwarded",
            ] {
                assert!(
                    a.all(forbidden).is_empty(),
                    "{}: {forbidden} reached the app: {a:?}",
                    c.name
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The cases whose details matter beyond method, target and body.
    let one = |bytes: &'static str| {
        let blue = &blue;
        let proxy = router.proxy;
        async move {
            blue.clear();
            let r = exchange(proxy, bytes.as_bytes()).await.expect("a response");
            assert_eq!(r.status, 200, "{}", r.text());
            blue.wait_for(1).await.remove(0)
        }
    };
    let a = one("GET http://target.example/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
    assert_eq!(
        a.one("host").as_deref(),
        Some("target.example"),
        "the target's authority wins"
    );
    let a = one("GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        a.one("host"),
        Some(blue.addr.to_string()),
        "HTTP/1.0: the upstream's authority"
    );
    let a = one("GET /conn HTTP/1.1\r\nHost: h\r\nConnection: close, Host, X-Forwarded-For, X-Real-IP, X-Request-Id, Authorization\r\nAuthorization: Bearer x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n").await;
    assert_eq!(a.one("host").as_deref(), Some("h"));
    assert_eq!(a.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(a.one("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(a.one("x-request-id").map(|v| v.len()), Some(32));
    assert!(
        a.all("authorization").is_empty(),
        "named in Connection: hop-by-hop"
    );
    let a = one("GET /forged HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Real-IP: 6.6.6.6\r\nX-Request-Id: bad id\r\n\r\n").await;
    assert_eq!(a.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(a.one("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_ne!(a.one("x-request-id").as_deref(), Some("bad id"));

    // The router took all of it and is still serving; none of it was the app's failure.
    let m = crate::fidelity::router_metrics(&router).await;
    let five = m
        .lines()
        .filter(|l| l.starts_with("bluegreen_requests_total") && l.contains("class=\"5xx\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(five, 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .proxy("trusted_proxies = [\"127.0.0.0/8\"]")
        .start();
    router.wait_until_live_healthy().await;
    let r = exchange(
        router.proxy,
        b"GET /t HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7, 127.0.0.5\r\nX-Forwarded-For: 127.0.0.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\nForwarded: for=203.0.113.7;proto=https\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let a = blue.wait_for(1).await.remove(0);
    assert_eq!(
        a.all("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.5, 127.0.0.6, 127.0.0.1"]
    );
    assert_eq!(a.one("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(a.one("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(a.one("x-forwarded-host").as_deref(), Some("shop.example"));
    assert_eq!(
        a.one("forwarded").as_deref(),
        Some("for=203.0.113.7;proto=https")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_101_for_a_protocol_the_client_did_not_ask_for_is_not_tunnelled() {
    let green = RawBackend::start("green").await;
    let liar = crate::raw::ScriptedUpstream::start(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    let router = RouterBuilder::addrs(vec![liar.addr], vec![green.addr])
        .health("interval = \"1h\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .start();
    let r = exchange(
        router.proxy,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-bluegreen-error"), Some("upstream_error"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_upstream_answers_are_502_and_the_router_keeps_serving() {
    let answers: [(&[u8], u16); 5] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            200,
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", 502),
        (b"NOT HTTP AT ALL\r\n\r\n", 502),
        (
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
            502,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0),
    ];
    for (answer, expect) in answers {
        let green = RawBackend::start("green").await;
        let bad = crate::raw::ScriptedUpstream::start(answer).await;
        let router = RouterBuilder::addrs(vec![bad.addr], vec![green.addr])
            .health("interval = \"1h\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
            .start();
        let mut c = RawClient::connect(router.proxy).await;
        c.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let text = String::from_utf8_lossy(answer).into_owned();
        let started = std::time::Instant::now();
        match (expect, c.response(false).await) {
            // Both framings: read as chunked, and the length is not passed on.
            (200, Some(r)) => assert_eq!((r.status, r.body.len()), (200, 0), "{text:?}"),
            (502, Some(r)) => assert_eq!(r.status, 502, "{text:?}: {}", r.text()),
            // A valid head went out before the body broke: the client sees the cut.
            (0, None) => assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{text:?}"
            ),
            (_, r) => panic!("{text:?}: expected {expect}, got {r:?}"),
        }
        assert_eq!(
            exchange(router.preview, b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .map(|r| r.status),
            Some(200),
            "{text:?}: router still serving"
        );
    }
}

/// Sum of the metric lines starting with `prefix` and containing every one of `labels`.
fn metric_sum(text: &str, prefix: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_broken_or_slow_body_is_the_clients_error_never_the_apps() {
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .upstream_timeout("300ms")
        .proxy("client_body_timeout = \"1s\"")
        .start();
    router.wait_until_live_healthy().await;

    // A malformed chunk after a good one.
    let r = exchange(
        router.proxy,
        b"POST /bad-chunk HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("x-bluegreen-error"), Some("client_body_error"));

    // A body that stops arriving.
    let mut c = RawClient::connect(router.proxy).await;
    c.send(b"POST /stall HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    let r = c.response(false).await.expect("an answer");
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.header("x-bluegreen-error"), Some("client_body_timeout"));

    // A client that goes away mid-body.
    let mut c = RawClient::connect(router.proxy).await;
    c.send(b"PUT /gone HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await;
    drop(c);

    // A slow but steady upload: longer than upstream_timeout in all, and fine,
    // since the upstream's deadline starts when the body has been sent.
    let mut c = RawClient::connect(router.proxy).await;
    c.send(b"POST /slow-upload HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n")
        .await;
    for piece in [b"ab", b"cd", b"ef", b"gh"] {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await; // the client's pace
        c.send(piece).await;
    }
    let r = c.response(false).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    let got = blue.wait_for(1).await;
    let up = got.iter().find(|a| a.target == "/slow-upload").unwrap();
    assert_eq!(up.body, b"abcdefgh");

    wait_until(
        std::time::Duration::from_secs(5),
        "three client errors counted",
        || async {
            let m = crate::fidelity::router_metrics(&router).await;
            metric_sum(&m, "bluegreen_requests_total", &["class=\"4xx\""]) >= 3.0
        },
    )
    .await;
    let m = crate::fidelity::router_metrics(&router).await;
    assert_eq!(
        metric_sum(&m, "bluegreen_requests_total", &["class=\"5xx\""]),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "bluegreen_upstream_errors_total", &[]),
        0.0,
        "{m}"
    );
    // Only the app's answers are timed, and an upload's own time is left out:
    // the one timed request is the slow upload, answered at once once sent.
    let live = ["side=\"blue\"", "listener=\"live\""];
    assert_eq!(
        metric_sum(&m, "bluegreen_request_duration_seconds_count", &live),
        1.0,
        "{m}"
    );
    let sum = metric_sum(&m, "bluegreen_request_duration_seconds_sum", &live);
    assert!(sum < 0.3, "upload time counted as latency: {sum}s");
    let status = router.status().await;
    assert_eq!(
        status["sides"]["blue"]["upstreams"][0]["health"], "healthy",
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_stops_reading_an_upload_is_a_504_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let green = RawBackend::start("green").await;
    let sink = crate::raw::ScriptedUpstream::never_reading().await;
    let router = RouterBuilder::addrs(vec![sink.addr], vec![green.addr])
        .upstream_timeout("500ms")
        .health("interval = \"1h\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .start();
    let sock = tokio::net::TcpStream::connect(router.proxy).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    const SIZE: usize = 64 << 20;
    // The client has the whole body ready; only the upstream is slow.
    let writer = tokio::spawn(async move {
        let head = format!("PUT /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {SIZE}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..SIZE >> 20 {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(15), rd.read(&mut buf))
            .await
            .expect("an answer, not a hang")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-bluegreen-error: upstream_timeout"),
        "{head}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    writer.abort();
}
