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
