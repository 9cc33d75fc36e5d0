//! Admin API: auth, bad requests, refusals, and the CLI on top of it.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_requires_the_token_but_probes_do_not() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    for token in [None, Some("wrong"), Some("")] {
        for (method, path) in [
            ("GET", "/api/v1/status"),
            ("POST", "/api/v1/switch"),
            ("POST", "/api/v1/rollback"),
        ] {
            let (status, body) = router.api(method, path, None, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    let (code, out) = curl(&["-i", &format!("{}/api/v1/status", router.admin_url())]);
    assert_eq!(code, 0);
    assert!(
        out.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{out}"
    );
    assert_eq!(router.api("GET", "/livez", None, None).await.0, 200);
    router.wait_all_healthy().await;
    assert_eq!(router.api("GET", "/readyz", None, None).await.0, 200);
    assert_eq!(router.status().await["generation"], 0, "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_admin_requests_get_json_4xx_and_change_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let cases = [
        ("POST", "/api/v1/switch", "{not json", 400, "bad_request"),
        (
            "POST",
            "/api/v1/switch",
            "{\"to\":\"purple\"}",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/switch",
            "{\"too\":\"green\"}",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/rollback",
            "{\"to\":\"green\"}",
            400,
            "bad_request",
        ),
        ("GET", "/api/v1/switch", "", 405, "method_not_allowed"),
        ("GET", "/api/v1/nope", "", 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, json) = router.api(method, path, Some(body), Some(TOKEN)).await;
        assert_eq!(got, status, "{method} {path} {body}: {json}");
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"].as_str().unwrap().len() > 5);
    }
    let (_, json) = router
        .api(
            "POST",
            "/api/v1/switch",
            Some("{\"to\":\"purple\"}"),
            Some(TOKEN),
        )
        .await;
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purple"),
        "{json}"
    );
    let st = router.status().await;
    assert_eq!(st["live"], "blue");
    assert_eq!(st["generation"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn switch_refuses_an_unhealthy_side_unless_forced() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    green.set_healthy(false);
    wait_until(Duration::from_secs(10), "green unhealthy", || async {
        router.status().await["sides"]["green"]["healthy"] == 0
    })
    .await;
    let (status, body) = router
        .api(
            "POST",
            "/api/v1/switch",
            Some("{\"to\":\"green\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "target_unhealthy");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("green") && msg.contains("503"),
        "says why: {msg}"
    );
    assert_eq!(router.status().await["live"], "blue");

    let (code, _, err) = router.cli(&["switch", "--to", "green"]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to switch to green"), "{err}");

    let (status, body) = router
        .api(
            "POST",
            "/api/v1/switch",
            Some("{\"to\":\"green\",\"force\":true}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["record"]["forced"], true);
    assert_eq!(router.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_status_switch_and_rollback() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;

    let (code, out, err) = router.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("live: blue"), "{out}");
    assert!(
        out.contains(&blue.addr.to_string()) && out.contains("healthy"),
        "{out}"
    );

    let (code, out, _) = router.cli(&["switch", "--to", "green", "--reason", "release 2"]);
    assert_eq!(code, 0);
    assert!(out.contains("green is now live"), "{out}");
    let (code, out, _) = router.cli(&["switch", "--to", "green"]);
    assert_eq!(code, 0);
    assert!(out.contains("already live"), "{out}");

    let (code, out, _) = router.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["live"], "green");
    assert_eq!(st["last_switch"]["reason"], "release 2");
    assert!(st["last_switch"]["actor"]
        .as_str()
        .unwrap()
        .starts_with("cli:"));

    let (code, out, _) = router.cli(&["rollback"]);
    assert_eq!(code, 0);
    assert!(out.contains("blue is now live"), "{out}");

    let out = std::process::Command::new(bin())
        .args(["status"])
        .env("BLUEGREEN_ADMIN", router.admin_url())
        .env_remove("BLUEGREEN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("bearer token"), "{err}");
    assert!(err.contains("BLUEGREEN_TOKEN (not set)"), "{err}");
    // An empty BLUEGREEN_TOKEN is no token, and the hint says so.
    let out = std::process::Command::new(bin())
        .args(["status"])
        .env("BLUEGREEN_ADMIN", router.admin_url())
        .env("BLUEGREEN_TOKEN", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("bearer token") && err.contains("BLUEGREEN_TOKEN (empty: no token sent)"),
        "{err}"
    );

    let out = std::process::Command::new(bin())
        .args(["status", "--admin", &format!("http://{}", closed_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_or_hostile_admin_input_is_refused_and_changes_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let state_file = router.state_dir.join("state.json");
    let before = std::fs::read(&state_file).unwrap();

    let huge = "x".repeat(1_500_000);
    let body = serde_json::json!({"to": "green", "reason": huge}).to_string();
    let (code, v) = router
        .api("POST", "/api/v1/switch", Some(&body), Some(TOKEN))
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1024"),
        "{v}"
    );
    let body = r#"{"to": "green", "actor": "me\u001b[31m"}"#;
    let (code, v) = router
        .api("POST", "/api/v1/switch", Some(body), Some(TOKEN))
        .await;
    assert_eq!(code, 400, "{v}");
    // Bidirectional controls would make the history read differently
    // from what it holds: refused, naming the field and the code point.
    for (path, body, field, point) in [
        (
            "/api/v1/switch",
            r#"{"to": "green", "reason": "ok \u202egnitset"}"#,
            "reason",
            "U+202E",
        ),
        (
            "/api/v1/switch",
            r#"{"to": "green", "actor": "alice\u2067"}"#,
            "actor",
            "U+2067",
        ),
    ] {
        let (code, v) = router.api("POST", path, Some(body), Some(TOKEN)).await;
        assert_eq!(code, 400, "{path} {body}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(field) && message.contains(point),
            "{path} {body}: {v}"
        );
    }
    // The reason of an accepted shadow difference goes into the deploy's
    // log too (the CLI: that endpoint takes JSON only).
    let (code, _, err) =
        router.cli(&["shadow", "accept", "/price", "--reason", "\u{200f}intended"]);
    assert_eq!(code, 2, "a bad_request is a usage error: {err}");
    assert!(err.contains("reason") && err.contains("U+200F"), "{err}");
    assert_eq!(
        std::fs::read(&state_file).unwrap(),
        before,
        "state untouched"
    );
    assert_eq!(router.status().await["live"], "blue");

    // A FIFO where a recording would go: refused at once, and the router
    // (status, switch) never waits on it.
    let records = router.state_dir.join("records");
    std::fs::create_dir_all(&records).unwrap();
    let fifo = records.join("trap");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    let (code, v) = router
        .api(
            "POST",
            "/api/v1/record/start",
            Some(r#"{"to": "trap"}"#),
            Some(TOKEN),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(router.switch_to("green").await["live"], "green");

    // The scheme name of Authorization is case-insensitive.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = http::Request::get(format!("{}/api/v1/status", router.admin_url()))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200, "{scheme}");
    }
}
