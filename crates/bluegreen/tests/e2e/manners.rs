//! Proxy manners: headers, HTTP/2 to HTTP/1.1, timeouts, limits.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let (code, out) = curl(&[
        "-i",
        "-H",
        "Connection: keep-alive, x-private",
        "-H",
        "X-Private: 1",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Forwarded-For: 10.1.2.3",
        "-H",
        "Host: shop.example",
        &router.url("/headers"),
    ]);
    assert_eq!(code, 0);
    let seen = blue.state.last_headers.lock().unwrap().clone();
    assert!(!seen.contains_key("x-private"), "{seen:?}");
    assert!(!seen.contains_key("keep-alive"), "{seen:?}");
    // No trusted_proxies: a client's own X-Forwarded-For is not believed.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(seen["host"], "shop.example");
    assert_eq!(seen["x-request-id"].len(), 32, "{seen:?}");
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("x-internal"),
        "response hop-by-hop removed: {out}"
    );
    assert!(!lower.contains("keep-alive: timeout"), "{out}");

    curl(&["-H", "X-Request-Id: abc-123", &router.url("/headers")]);
    assert_eq!(
        blue.state.last_headers.lock().unwrap()["x-request-id"],
        "abc-123"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_reach_http1_upstreams() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let (code, out) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " %{http_version}",
        &router.url("/"),
    ]);
    assert_eq!((code, out.as_str()), (0, "blue 2"));
    let (status, body) = get(&h2_client(), &router.url("/headers")).await.unwrap();
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        seen["host"],
        router.proxy.to_string(),
        "host from :authority"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_a_504() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .upstream_timeout("300ms")
        .start();
    router.wait_all_healthy().await;
    let (code, out) = curl(&["-i", &router.url("/slow")]);
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(out.contains("x-bluegreen-error: upstream_timeout"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_head_is_refused_and_the_router_stays_up() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .proxy("max_header_bytes = 16384")
        .start();
    router.wait_all_healthy().await;
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let (_, out) = curl(&["-i", "-H", &big, &router.url("/")]);
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert_eq!(blue.requests(), 0);
    // Garbage on the wire does not take the router down either.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(router.proxy).unwrap();
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(
        get(&h1_client(), &router.url("/")).await.unwrap(),
        (200, "blue".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_kept_alive_and_reused() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = without_periodic_checks(&blue, &green);
    router.wait_all_healthy().await;
    let before = blue
        .state
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    let c = h1_client();
    for _ in 0..50 {
        assert_eq!(get(&c, &router.url("/chunked")).await.unwrap().0, 200);
    }
    let opened = blue
        .state
        .connections
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    assert_eq!(
        opened, 1,
        "50 sequential requests use one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_pooled_connection_never_fails_a_request() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = without_periodic_checks(&blue, &green);
    router.wait_all_healthy().await;
    let c = h1_client();
    assert_eq!(
        get(&c, &router.url("/")).await.unwrap(),
        (200, "blue".into())
    );
    // The upstream restarts: every pooled connection to it is now dead.
    let addr = blue.addr;
    blue.kill();
    drop(blue);
    let blue = Backend::start_on("blue", addr).await;
    for _ in 0..5 {
        assert_eq!(
            get(&c, &router.url("/")).await.unwrap(),
            (200, "blue".into())
        );
    }
    assert!(blue.requests() >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_client_connections_are_closed_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .proxy("idle_timeout = \"300ms\"")
        .start();
    router.wait_all_healthy().await;
    let mut s = tokio::net::TcpStream::connect(router.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now idle: the router must close it (EOF) well before this limit.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection was not closed");
}

/// A router whose health checks run once at start: the tests count upstream
/// connections, and periodic checks would open more.
fn without_periodic_checks(blue: &Backend, green: &Backend) -> RouterProc {
    RouterBuilder::new(&[blue], &[green])
        .health(
            "interval = \"1h\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 1",
        )
        .start()
}
