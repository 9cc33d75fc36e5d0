//! Active and passive health, and retries on another upstream.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_upstream_leaves_rotation_and_comes_back() {
    let b1 = Backend::start("blue").await;
    let b2 = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&b1, &b2], &[&green]).start();
    router.wait_all_healthy().await;
    b2.set_healthy(false);
    wait_until(Duration::from_secs(10), "b2 unhealthy", || async {
        router.status().await["sides"]["blue"]["healthy"] == 1
    })
    .await;
    let before = b2.requests();
    let c = h1_client();
    for _ in 0..20 {
        assert_eq!(
            get(&c, &router.url("/")).await.unwrap(),
            (200, "blue".into())
        );
    }
    assert_eq!(b2.requests(), before, "no traffic to an unhealthy upstream");
    b2.set_healthy(true);
    wait_until(Duration::from_secs(10), "b2 healthy again", || async {
        router.status().await["sides"]["blue"]["healthy"] == 2
    })
    .await;
    for _ in 0..20 {
        get(&c, &router.url("/")).await.unwrap();
    }
    assert!(
        b2.requests() > before,
        "a recovered upstream gets traffic again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_is_retried_on_another_upstream() {
    let b1 = Backend::start("blue").await;
    let b2 = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // Slow active checks: passive marking and retries must do the work.
    let router = RouterBuilder::new(&[&b1, &b2], &[&green])
        .health(
            "interval = \"1h\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 1",
        )
        .start();
    router.wait_all_healthy().await;
    b2.kill();
    let c = h1_client();
    for i in 0..30 {
        assert_eq!(
            get(&c, &router.url("/")).await.unwrap(),
            (200, "blue".into()),
            "request {i}"
        );
    }
    let st = router.status().await;
    let ups = st["sides"]["blue"]["upstreams"].as_array().unwrap();
    let dead = ups
        .iter()
        .find(|u| u["address"] == b2.addr.to_string())
        .unwrap();
    assert_eq!(dead["health"], "unhealthy", "passively marked down: {st}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("onnect"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_side_with_no_reachable_upstream_answers_502() {
    let green = Backend::start("green").await;
    let router = RouterBuilder::addrs(vec![closed_port()], vec![green.addr]).start();
    let (code, out) = curl(&["-i", "-X", "POST", "-d", "x=1", &router.url("/orders")]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("HTTP/1.1 502") || out.starts_with("HTTP/1.1 503"),
        "{out}"
    );
    assert!(out.contains("x-bluegreen-error:"), "{out}");
    assert!(
        !out.contains("127.0.0.1"),
        "upstream addresses stay in the log: {out}"
    );
}

/// Health checks keep one connection per upstream (they opened one every
/// check: 110+ sockets in TIME-WAIT per upstream at rest), and still see an
/// app that died: its connection closes with it, the next check connects,
/// is refused, and the upstream is down.
#[tokio::test(flavor = "multi_thread")]
async fn health_checks_reuse_one_connection_and_still_see_a_dead_app() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, checks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c2, k2) = (conns.clone(), checks.clone());
    let app = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            c2.fetch_add(1, Ordering::SeqCst);
            let k = k2.clone();
            tasks.spawn(async move {
                let mut buf = Vec::new();
                while crate::raw::read_request(&mut sock, &mut buf)
                    .await
                    .is_some()
                {
                    k.fetch_add(1, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let green = Backend::start("green").await;
    let router = RouterBuilder::addrs(vec![addr], vec![green.addr]).start();
    router.wait_all_healthy().await;
    wait_until(Duration::from_secs(10), "20 checks", || async {
        checks.load(Ordering::SeqCst) >= 20
    })
    .await;
    assert!(
        conns.load(Ordering::SeqCst) <= 2,
        "{} connections for {} checks",
        conns.load(Ordering::SeqCst),
        checks.load(Ordering::SeqCst)
    );
    // The app dies (its listener and connections with it): down.
    app.abort();
    wait_until(
        Duration::from_secs(10),
        "the dead app is unhealthy",
        || async { router.status().await["sides"]["blue"]["healthy"] == 0 },
    )
    .await;
}
