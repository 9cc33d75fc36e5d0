//! Pause and maintenance: held requests wait for `resume` and go where the
//! router points then (a switch made during the pause applies to them);
//! a full queue or a long wait is a 503 with Retry-After; maintenance
//! answers the live listener only, and survives a restart.

use crate::support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each request: when it began, when it was answered, and the answer.
type Seen = Arc<Mutex<Vec<(Instant, Instant, Result<(u16, String), String>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_under_load_fails_nothing_and_the_held_requests_go_where_the_switch_points() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    router.wait_all_healthy().await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, seen, base) = (stop.clone(), seen.clone(), router.url(""));
            tokio::spawn(async move {
                let c = h1_client();
                for n in 0..100_000u32 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let started = Instant::now();
                    let r = get(&c, &format!("{base}/orders/{n}?client={i}"))
                        .await
                        .map_err(|e| e.to_string());
                    seen.lock().unwrap().push((started, Instant::now(), r));
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "load running", || async {
        seen.lock().unwrap().len() > 200
    })
    .await;

    let paused_at = Instant::now();
    let (code, out, err) = router.cli(&["pause", "--timeout", "20s"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(Duration::from_secs(10), "every client held", || async {
        router.status().await["paused"]["waiting"].as_u64() == Some(8)
    })
    .await;
    // The migration window: two seconds with nothing reaching the app,
    // and the switch to the new version made while paused.
    let before = b.requests() + g.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        b.requests() + g.requests(),
        before,
        "nothing reached the app while paused"
    );
    router.switch_to("green").await;
    let (code, out, err) = router.cli(&["resume"]);
    let resumed_at = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("8 held requests released"), "{out}");
    wait_until(
        Duration::from_secs(10),
        "traffic after the resume",
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|(t, _, _)| *t > resumed_at)
                .count()
                > 100
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let all = std::mem::take(&mut *seen.lock().unwrap());
    let failed: Vec<_> = all
        .iter()
        .filter(|(_, _, r)| !matches!(r, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(3)]
    );
    // The requests held over the pause (begun before the resume, answered
    // after it): one per client, each answered by green.
    let held: Vec<_> = all
        .iter()
        .filter(|(t, done, _)| {
            *t < resumed_at && *done > resumed_at && *t < paused_at + Duration::from_secs(3)
        })
        .collect();
    assert_eq!(held.len(), 8, "one held request per client");
    assert!(held
        .iter()
        .all(|(_, _, r)| matches!(r, Ok((_, body)) if body == "green")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_or_a_long_wait_is_a_503_the_app_never_sees() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["pause", "--timeout", "400ms", "--limit", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let before = b.requests();
    let url = router.url("/a?b=c");
    let first = tokio::spawn({
        let url = url.clone();
        async move { curl(&["-i", &url]) }
    });
    wait_until(Duration::from_secs(5), "one held", || async {
        router.status().await["paused"]["waiting"].as_u64() == Some(1)
    })
    .await;
    let (_, full) = curl(&["-i", &url]);
    assert!(full.starts_with("HTTP/1.1 503"), "{full}");
    assert!(
        full.to_ascii_lowercase().contains("retry-after: 1"),
        "{full}"
    );
    assert!(full.contains("already waiting"), "{full}");
    let (_, waited) = first.await.unwrap();
    assert!(waited.starts_with("HTTP/1.1 503"), "{waited}");
    assert!(waited.contains("waited 400 ms"), "{waited}");
    assert_eq!(b.requests(), before, "the app never saw them");
    let (code, _, _) = router.cli(&["resume"]);
    assert_eq!(code, 0);
    let (code, body) = curl(&[&url]);
    assert_eq!((code, body.as_str()), (0, "blue"));
    let (code, _, err) = router.cli(&["resume"]);
    assert_eq!(code, 1);
    assert!(err.contains("not paused"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_answers_the_live_listener_only_and_survives_a_restart() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let state = tempfile::tempdir().unwrap();
    let builder = || RouterBuilder::new(&[&b], &[&g]).state_dir(state.path());
    let router = builder().start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&[
        "maintenance",
        "on",
        "--message",
        "Back at 14:00 UTC",
        "--retry-after",
        "300",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let before = b.requests() + g.requests();
    let (_, page) = curl(&["-i", &router.url("/checkout")]);
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.to_ascii_lowercase().contains("retry-after: 300"),
        "{page}"
    );
    assert!(page.ends_with("Back at 14:00 UTC\n"), "{page}");
    let (_, json) = curl(&["-H", "Accept: application/json", &router.url("/api/cart")]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["message"], "Back at 14:00 UTC");
    assert_eq!(v["retry_after"], 300);
    // Preview (the idle side) still answers; the app saw none of the above.
    let (code, body) = curl(&[&router.preview_url("/")]);
    assert_eq!((code, body.as_str()), (0, "green"));
    assert_eq!(b.requests() + g.requests(), before + 1);
    assert_eq!(
        router.status().await["maintenance"]["message"],
        "Back at 14:00 UTC"
    );

    // Kept across a restart.
    drop(router);
    let router = builder().start();
    let (_, page) = curl(&["-i", &router.url("/")]);
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    let (code, out, err) = router.cli(&["maintenance", "off"]);
    assert_eq!(code, 0, "{out}{err}");
    router.wait_all_healthy().await;
    let (code, body) = curl(&[&router.url("/")]);
    assert_eq!((code, body.as_str()), (0, "blue"));
}
