//! Shadow traffic end to end: real upstreams that answer differently on
//! purpose (a changed field, a changed status, a random id and a timestamp,
//! a slow endpoint), the real router mirroring live requests to the idle
//! side, and the report read through the real CLI and API.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One request with a method, headers and a body; (status, body).
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn report(router: &RouterProc) -> serde_json::Value {
    let (status, v) = router.api("GET", "/api/v1/shadow", None, Some(TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    v["shadow"].clone()
}

/// Waits until `n` pairs were compared and nothing is in flight.
async fn wait_compared(router: &RouterProc, n: u64) -> serde_json::Value {
    wait_until(
        Duration::from_secs(15),
        &format!("{n} shadow pairs compared"),
        || async {
            let r = report(router).await;
            r["compared"] == n && r["in_flight"] == 0
        },
    )
    .await;
    report(router).await
}

fn endpoint<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {r:#}"))
}

fn fields(e: &serde_json::Value) -> Vec<String> {
    e["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_finds_real_differences_and_learns_noise_from_two_live_upstreams() {
    let (b1, b2, g) = (
        Backend::start("blue-1").await,
        Backend::start("blue-2").await,
        Backend::start("green").await,
    );
    let router = RouterBuilder::new(&[&b1, &b2], &[&g]).start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["shadow", "start", "--percent", "100"]);
    assert_eq!(code, 0, "{out}{err}");

    // Live answers are blue's, untouched by the shadow.
    for i in 0..40 {
        let (status, body) = send("GET", &router.url(&format!("/shadow/users/{i}")), &[], "").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["price"], 10, "{body}");
    }
    for _ in 0..20 {
        let (status, _) = send("GET", &router.url("/shadow/same"), &[], "").await;
        assert_eq!(status, 200);
    }
    for _ in 0..10 {
        let (status, _) = send("GET", &router.url("/shadow/status"), &[], "").await;
        assert_eq!(status, 200, "the live answer, never the idle side's 500");
    }
    let r = wait_compared(&router, 70).await;
    assert_eq!(r["mirrored"], 70, "{r:#}");
    assert_eq!(r["dropped"], 0, "{r:#}");
    assert!(r["noise_samples"].as_u64().unwrap() >= 15, "{r:#}");

    // A changed field: every pair differs, and only by its price.
    let users = endpoint(&r, "GET /shadow/users/{id}");
    assert_eq!(users["requests"], 40);
    assert_eq!(users["differing"], 40, "{users:#}");
    assert_eq!(fields(users), vec!["/price"], "{users:#}");
    let ex = &users["fields"][0]["examples"][0];
    assert_eq!(
        (ex["live"].as_str(), ex["idle"].as_str()),
        (Some("10"), Some("12"))
    );
    assert!(ex["request"]
        .as_str()
        .unwrap()
        .starts_with("GET /shadow/users/"));
    // Random ids and timestamps differ between the two live upstreams: noise.
    let noise: Vec<&str> = users["noise"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        noise.contains(&"/request_id") && noise.contains(&"/ts"),
        "{noise:?}"
    );

    // Only noise: nothing differs, and the report says what was compared.
    let same = endpoint(&r, "GET /shadow/same");
    assert_eq!(
        (same["requests"].as_u64(), same["differing"].as_u64()),
        (Some(20), Some(0)),
        "{same:#}"
    );
    assert_eq!(same["compared"][0], "GET /shadow/same", "{same:#}");

    // A changed status.
    let status = endpoint(&r, "GET /shadow/status");
    assert_eq!(status["differing"], 10);
    assert!(fields(status).contains(&"status".to_string()), "{status:#}");
    let field = status["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "status")
        .unwrap();
    assert_eq!(field["examples"][0]["idle"], "500");
    assert_eq!(field["examples"][0]["live"], "200");

    // The idle side saw every copy, marked; the live side's extra copies
    // (noise samples) are marked too.
    assert_eq!(g.state.shadowed.load(Ordering::SeqCst), 70);
    assert_eq!(
        b1.state.shadowed.load(Ordering::SeqCst) + b2.state.shadowed.load(Ordering::SeqCst),
        r["noise_samples"].as_u64().unwrap()
    );

    // The CLI report, for humans and as JSON.
    let (code, out, err) = router.cli(&["shadow", "report"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GET /shadow/users/{id}"), "{out}");
    assert!(out.contains("/price ×40"), "{out}");
    assert!(out.contains("live 10 | idle 12"), "{out}");
    let (code, out, _) = router.cli(&["shadow", "stop", "--json"]);
    assert_eq!(code, 0);
    let stopped: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stopped["running"], false);
    assert_eq!(stopped["compared"], 70);

    // Stopped: nothing more is mirrored.
    send("GET", &router.url("/shadow/same"), &[], "").await;
    assert_eq!(g.state.shadowed.load(Ordering::SeqCst), 70);
    let (code, _, err) = router.cli(&["shadow", "stop"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_never_mirrored_unless_the_config_lists_their_method() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    router.wait_all_healthy().await;
    let (status, _) = router
        .api("POST", "/api/v1/shadow/start", Some("{}"), Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    for i in 0..10 {
        let (status, _) = send(
            "POST",
            &router.url("/shadow/write"),
            &[],
            &format!("order {i}"),
        )
        .await;
        assert_eq!(status, 201);
    }
    send("GET", &router.url("/shadow/same"), &[], "").await;
    wait_compared(&router, 1).await;
    assert_eq!(b.state.writes.load(Ordering::SeqCst), 10);
    assert_eq!(
        g.state.writes.load(Ordering::SeqCst),
        0,
        "a POST reached the idle side"
    );
    drop(router);

    // Listed: mirrored with its body and the shadow header.
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra("[shadow]\nmethods = [\"GET\", \"post\"]\n")
        .start();
    router.wait_all_healthy().await;
    router
        .api("POST", "/api/v1/shadow/start", Some("{}"), Some(TOKEN))
        .await;
    let marked = g.state.shadowed.load(Ordering::SeqCst);
    for i in 0..5 {
        send(
            "POST",
            &router.url("/shadow/write"),
            &[("content-type", "text/plain")],
            &format!("order {i}"),
        )
        .await;
    }
    wait_compared(&router, 5).await;
    assert_eq!(g.state.writes.load(Ordering::SeqCst), 5);
    assert_eq!(g.state.shadowed.load(Ordering::SeqCst) - marked, 5);
    // Copies go out concurrently (`shadow.concurrency`): which arrives
    // last is not fixed, but each carries its own request's body.
    let last = g.state.last_write.lock().unwrap().clone();
    assert!(
        (0..5).any(|i| last == format!("order {i}")),
        "a copy with its body: {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_idle_side_makes_copies_drop_and_be_counted() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra("[shadow]\nconcurrency = 1\nqueue = 2\n")
        .start();
    router.wait_all_healthy().await;
    router
        .api(
            "POST",
            "/api/v1/shadow/start",
            Some("{\"percent\": 100}"),
            Some(TOKEN),
        )
        .await;
    for _ in 0..30 {
        let (status, body) = send("GET", &router.url("/shadow/slow"), &[], "").await;
        assert_eq!((status, body.as_str()), (200, "{\"slow\":true}"));
    }
    let r = report(&router).await;
    let (mirrored, dropped) = (
        r["mirrored"].as_u64().unwrap(),
        r["dropped"].as_u64().unwrap(),
    );
    assert_eq!(mirrored + dropped, 30, "{r:#}");
    assert!(dropped >= 20, "one in flight and two queued at most: {r:#}");
    // What was sent is still compared: same answer, slower.
    let r = wait_compared(&router, mirrored).await;
    let slow = endpoint(&r, "GET /shadow/slow");
    assert_eq!(slow["differing"], 0, "{slow:#}");
    assert!(
        slow["idle"]["p50_ms"].as_f64().unwrap() >= 400.0,
        "{slow:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_by_a_header_keeps_each_user_wholly_in_or_out() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra("[shadow]\nsticky_header = \"X-User\"\npercent = 50\n")
        .start();
    router.wait_all_healthy().await;
    router
        .api("POST", "/api/v1/shadow/start", None, Some(TOKEN))
        .await;
    let mut per_user = Vec::new();
    for u in 0..20 {
        let before = g.state.shadowed.load(Ordering::SeqCst);
        let user = format!("user-{u}");
        for _ in 0..5 {
            send("GET", &router.url("/shadow/same"), &[("x-user", &user)], "").await;
        }
        wait_until(Duration::from_secs(5), "copies settled", || async {
            report(&router).await["in_flight"] == 0
        })
        .await;
        per_user.push(g.state.shadowed.load(Ordering::SeqCst) - before);
    }
    assert!(per_user.iter().all(|&n| n == 0 || n == 5), "{per_user:?}");
    let users_in = per_user.iter().filter(|&&n| n == 5).count();
    assert!((3..=17).contains(&users_in), "{per_user:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_shadow_requests_are_refused_and_change_nothing() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    router.wait_all_healthy().await;
    for (body, needle) in [
        ("{\"percent\": 150}", "percent"),
        ("{\"for\": \"soon\"}", "for"),
        ("{\"requests\": 0}", "requests"),
        ("{\"bogus\": 1}", "bogus"),
    ] {
        let (status, v) = router
            .api("POST", "/api/v1/shadow/start", Some(body), Some(TOKEN))
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v.to_string().contains(needle), "{body}: {v}");
    }
    assert!(report(&router).await.is_null());
    // An unhealthy idle side is refused with the reason.
    g.set_healthy(false);
    wait_until(Duration::from_secs(5), "green unhealthy", || async {
        router.status().await["sides"]["green"]["healthy"] == 0
    })
    .await;
    let (code, _, err) = router.cli(&["shadow", "start"]);
    assert_eq!(code, 1);
    assert!(err.contains("no healthy upstream"), "{err}");
    // A config with a bad [shadow] table is refused by check, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let text = RouterBuilder::new(&[&b], &[&g])
        .extra("[shadow]\nmethods = [\"GET\", \"CONNECT\"]\nignore_paths = [\"price\"]\n")
        .config_text(dir.path());
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("shadow.methods") && err.contains("CONNECT"),
        "{err}"
    );
    assert!(err.contains("shadow.ignore_paths"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_ends_the_shadow_run() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    router.wait_all_healthy().await;
    router
        .api(
            "POST",
            "/api/v1/shadow/start",
            Some("{\"for\": \"1h\"}"),
            Some(TOKEN),
        )
        .await;
    send("GET", &router.url("/shadow/same"), &[], "").await;
    wait_compared(&router, 1).await;
    router.switch_to("green").await;
    assert_eq!(report(&router).await["running"], false);
    send("GET", &router.url("/shadow/same"), &[], "").await;
    assert_eq!(
        b.state.shadowed.load(Ordering::SeqCst),
        0,
        "no copies to the old side"
    );
}
