//! Persisted state: restored on restart, never corrupted by kill -9, and a
//! corrupt file stops the router with a clear error.

use crate::support::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn restart_restores_the_live_side_and_history() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let mut router = RouterBuilder::new(&[&blue], &[&green])
        .state_dir(dir.path())
        .start();
    router.wait_all_healthy().await;
    router.switch_to("green").await;
    router.signal("TERM");
    assert!(router.wait_exit(Duration::from_secs(15)).success());
    drop(router);

    let router = RouterBuilder::new(&[&blue], &[&green])
        .state_dir(dir.path())
        .start();
    let st = router.status().await;
    assert_eq!(st["live"], "green");
    assert_eq!(st["generation"], 1);
    assert_eq!(st["last_switch"]["from"], "blue");
    assert_eq!(
        get(&h1_client(), &router.url("/")).await.unwrap().1,
        "green"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_switches_never_corrupts_state() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let mut last_generation = 0;
    for round in 0..6 {
        let mut router = RouterBuilder::new(&[&blue], &[&green])
            .state_dir(dir.path())
            .health("interval = \"50ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
            .start();
        // The state loaded: it must be whole and no older than what we saw last.
        let st = router.status().await;
        let generation = st["generation"].as_u64().unwrap();
        assert_eq!(
            generation, last_generation,
            "round {round}: the restarted router must load exactly what was saved"
        );
        let live = st["live"].as_str().unwrap().to_string();
        if generation > 0 {
            assert_eq!(
                st["last_switch"]["to"],
                live.as_str(),
                "round {round}: {st}"
            );
        }
        router.wait_all_healthy().await;

        // Switch as fast as possible from several clients, and kill -9 mid-stream.
        let done = Arc::new(AtomicU64::new(0));
        let admin = router.admin_url();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (done, admin) = (done.clone(), admin.clone());
            tasks.push(tokio::spawn(async move {
                let client =
                    bluegreen_api::AdminClient::new(&admin, Some(TOKEN.into()), "test".into());
                for _ in 0..2_000 {
                    let r: Result<serde_json::Value, _> =
                        client.post("/api/v1/switch", serde_json::json!({})).await;
                    match r {
                        Ok(v) if v["changed"] == true => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        let target = 20 + round * 7;
        wait_until(Duration::from_secs(20), "switches in progress", || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) >= target as u64 }
        })
        .await;
        router.child.kill().unwrap(); // SIGKILL
        router.child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
        let raw = std::fs::read(dir.path().join("state.json")).unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&raw).expect("state file is whole JSON after kill -9");
        let saved = saved["generation"].as_u64().unwrap();
        // Every switch the API confirmed was on disk before it was confirmed.
        let confirmed = done.load(Ordering::SeqCst);
        assert!(
            saved >= generation + confirmed,
            "round {round}: saved {saved} < {generation} + {confirmed} confirmed"
        );
        last_generation = saved;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_state_file_stops_the_router_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let garbage = b"{\"format\":1,\"live\":\"gre";
    std::fs::write(state_dir.join("state.json"), garbage).unwrap();
    let config = dir.path().join("bluegreen.toml");
    let text =
        RouterBuilder::addrs(vec![closed_port()], vec![closed_port()]).config_text(&state_dir);
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("BG_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing started: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read(state_dir.join("state.json")).unwrap(),
        garbage,
        "the file is left for inspection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_router_on_the_same_state_dir_is_refused() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let _first = RouterBuilder::new(&[&blue], &[&green])
        .state_dir(dir.path())
        .start();
    let cfg = dir.path().join("second.toml");
    std::fs::write(
        &cfg,
        RouterBuilder::new(&[&blue], &[&green]).config_text(dir.path()),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("BG_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another bluegreen"), "{err}");
}
