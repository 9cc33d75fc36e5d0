//! Replay: recorded requests sent again to a real server, with their timing.

use crate::support::*;
use bluegreen_core::record::Recorded;
use std::time::{Duration, Instant};

fn record_file(dir: &std::path::Path, lines: &[Recorded]) -> std::path::PathBuf {
    let path = dir.join("traffic.jsonl");
    let text: String = lines.iter().map(|r| r.to_line() + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(args: &[&str], admin: Option<&RouterProc>) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("replay").args(args);
    if let Some(r) = admin {
        cmd.env("BLUEGREEN_ADMIN", r.admin_url())
            .env("BLUEGREEN_TOKEN", TOKEN);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reproduces_recorded_requests_with_their_timing() {
    let backend = Backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = vec!["authorization".to_string()];
    let file = record_file(
        dir.path(),
        &[
            Recorded::new(
                1_000,
                "GET",
                "/a?x=1",
                vec![("accept".into(), "*/*".into())],
                b"",
                &secret,
            ),
            Recorded::new(
                1_200,
                "POST",
                "/b",
                vec![("content-type".into(), "application/octet-stream".into())],
                &[0, 1, 2, 255],
                &secret,
            ),
            Recorded::new(
                1_400,
                "GET",
                "/headers",
                vec![
                    ("authorization".into(), "Bearer s3cret".into()),
                    ("x-tenant".into(), "acme".into()),
                ],
                b"",
                &secret,
            ),
        ],
    );
    let url = format!("http://{}", backend.addr);
    let t = Instant::now();
    let (code, out, err) = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            replay(
                &[file.to_str().unwrap(), "--target", &url, "--speed", "2x"],
                None,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "400 ms of recorded time at 2x takes at least 200 ms"
    );
    assert!(
        out.contains("replayed 3 requests") && out.contains("200 ×3"),
        "{out}"
    );
    assert_eq!(backend.requests(), 3);
    let seen = backend.state.last_headers.lock().unwrap().clone();
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-bluegreen-replay"], "1");
    assert!(
        !seen.contains_key("authorization"),
        "redacted secrets are not replayed: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_to_a_side_goes_to_its_upstreams() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Recorded> = (0..20)
        .map(|i| Recorded::new(i, "GET", "/", vec![], b"", &[]))
        .collect();
    let file = record_file(dir.path(), &lines);
    let (code, out, err) = replay(
        &[
            file.to_str().unwrap(),
            "--target",
            "green",
            "--speed",
            "max",
            "--json",
        ],
        Some(&router),
    );
    assert_eq!(code, 0, "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["sent"], 20);
    assert_eq!(summary["statuses"]["200"], 20);
    assert_eq!(green.requests(), 20);
    assert_eq!(blue.requests(), 0);
}

#[test]
fn a_malformed_or_truncated_record_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = Recorded::new(1, "GET", "/", vec![], b"", &[]).to_line();
    let path = dir.path().join("cut.jsonl");
    std::fs::write(&path, format!("{good}\n{}", &good[..good.len() / 2])).unwrap();
    let (code, _, err) = replay(
        &[path.to_str().unwrap(), "--target", "http://127.0.0.1:9"],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("cut.jsonl: line 2: truncated"), "{err}");
    let (code, _, err) = replay(
        &[
            path.to_str().unwrap(),
            "--target",
            "http://127.0.0.1:9",
            "--speed",
            "fast",
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_live_traffic_replays_against_another_server() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    // Only a plain name is taken; the file goes into the state dir's records/.
    for bad in ["/tmp/elsewhere.jsonl", "../up.jsonl", "a/b"] {
        let (code, _, err) = router.cli(&["record", "start", "--to", bad]);
        assert_eq!(code, 2, "a bad_request is a usage error: {bad}: {err}");
        assert!(err.contains("not a valid recording name"), "{err}");
    }
    let file = router.state_dir.join("records").join("live.jsonl");
    let (code, out, err) = router.cli(&["record", "start", "--to", "live.jsonl"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(file.exists(), "{out}");
    let (code, _) = curl(&["-H", "Authorization: Bearer s3cret", &router.url("/a?x=1")]);
    assert_eq!(code, 0);
    let (code, _) = curl(&["-X", "POST", "--data-binary", "hello", &router.url("/b")]);
    assert_eq!(code, 0);
    // The preview listener is not live traffic: never recorded.
    let _ = curl(&[&router.preview_url("/not-recorded")]);
    let (code, out, _) = router.cli(&["record", "stop"]);
    assert_eq!(code, 0);
    assert!(out.contains("2 requests"), "{out}");

    let records = Recorded::parse_all(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].method.as_str(), records[0].path.as_str()),
        ("GET", "/a?x=1")
    );
    assert!(records[0]
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "[redacted]"));
    assert_eq!(records[0].status, Some(200));
    assert_eq!(records[1].body_bytes(), b"hello");
    assert_eq!(
        blue.requests(),
        2,
        "recording forwarded the requests untouched"
    );

    let other = Backend::start("other").await;
    let (code, out, err) = replay(
        &[
            file.to_str().unwrap(),
            "--target",
            &format!("http://{}", other.addr),
            "--speed",
            "max",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(other.requests(), 2);

    let (code, _, err) = router.cli(&["record", "stop"]);
    assert_eq!(code, 1);
    assert!(err.contains("no recording is running"), "{err}");
    // A name already taken is refused: a recording never appends.
    let (code, _, err) = router.cli(&["record", "start", "--to", "live.jsonl"]);
    assert_eq!(code, 1);
    assert!(err.contains("File exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recording_samples_the_asked_share() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let file = router.state_dir.join("records").join("half.jsonl");
    assert_eq!(
        router
            .cli(&["record", "start", "--to", "half.jsonl", "--percent", "50"])
            .0,
        0
    );
    let c = h1_client();
    for _ in 0..10 {
        // Preview traffic is never recorded, nor does it take a sampling slot.
        get(&c, &router.preview_url("/preview")).await.unwrap();
        get(&c, &router.url("/")).await.unwrap();
    }
    assert_eq!(router.cli(&["record", "stop"]).0, 0);
    let records = Recorded::parse_all(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(records.len(), 5);
}
