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
    // A timeout the API refuses is a usage error (exit 2) that names the
    // field, and pauses nothing.
    let (code, out, err) = router.cli(&["pause", "--timeout", "20m"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("\"timeout\"") && err.contains("bad_request"),
        "{err}"
    );
    assert!(router.status().await["paused"].is_null());
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
    // Text status says so in plain words, not only --json.
    let (code, text, err) = router.cli(&["status"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains("MAINTENANCE: every live request is answered 503"),
        "{text}"
    );
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

/// Requests held by a pause are handed to the app one after the other in
/// the order they came (before: 100 held arrived as 48, 99, 49, …). With one
/// request at a time per upstream that is the order the app sees them in;
/// with more, two handed over microseconds apart may be read in either
/// order by a multi-threaded app (the test prints how far).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_requests_reach_the_app_in_the_order_they_came() {
    use tokio::io::AsyncWriteExt;
    // An app that numbers connections as it accepts them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let seen2 = seen.clone();
    let app = tokio::spawn(async move {
        for accepted in 0.. {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = crate::raw::read_request(&mut sock, &mut buf).await {
                    if req.target != "/healthz" {
                        seen.lock().unwrap().push((accepted, req.target));
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let green = crate::raw::RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![addr], vec![green.addr])
        .proxy("upstream_max_requests = 1")
        .start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["pause", "--timeout", "30s"]);
    assert_eq!(code, 0, "{out}{err}");
    let n = 100u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = router.url(&format!("/order/{i}"));
        tasks.push(tokio::spawn(async move {
            // One client connection each, as separate clients would.
            get(&h1_client(), &url).await
        }));
        wait_until(Duration::from_secs(10), "held in turn", || async {
            router.status().await["paused"]["waiting"].as_u64() == Some(i + 1)
        })
        .await;
    }
    let (code, out, err) = router.cli(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().0, 200);
    }
    let arrived = seen.lock().unwrap().clone();
    let order: Vec<u64> = arrived
        .iter()
        .filter_map(|(_, t)| t.strip_prefix("/order/")?.parse().ok())
        .collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>(), "{arrived:?}");
    app.abort();
}

/// Python's `http.server` (HTTP/1.0, listen backlog 5) behind a pause: 60
/// held requests released at once would be 60 connections at once, SYNs
/// dropped, 502s. With a limit of requests per upstream the rest wait in
/// its queue, and every one is answered; the queue shows in status and
/// metrics while it holds requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_pause_never_storms_a_small_app() {
    let port = closed_port();
    let green = crate::raw::RawBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    // Slow enough that the queue fills: 20 ms per request, one at a time.
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "import http.server, socketserver, sys, time\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       if self.path != '/healthz': time.sleep(0.02)\n\
         \x20       body = b'blue'\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('content-length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *a): pass\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n",
    )
    .unwrap();
    let mut python = std::process::Command::new("python3")
        .arg(&app)
        .arg(port.port().to_string())
        .spawn()
        .expect("python3");
    let router = RouterBuilder::addrs(vec![port], vec![green.addr])
        .proxy("upstream_max_requests = 4\nupstream_queue_timeout = \"30s\"")
        .start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["pause", "--timeout", "30s"]);
    assert_eq!(code, 0, "{out}{err}");
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let url = router.url(&format!("/burst/{i}"));
            tokio::spawn(async move { get(&h1_client(), &url).await })
        })
        .collect();
    wait_until(Duration::from_secs(10), "60 held", || async {
        router.status().await["paused"]["waiting"].as_u64() == Some(60)
    })
    .await;
    let (code, text, err) = router.cli(&["status"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains("PAUSED: live requests are held (60 waiting"),
        "{text}"
    );
    let (code, out, err) = router.cli(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut seen_queue = false;
    for _ in 0..50 {
        let s = router.status().await;
        let q = s["sides"]["blue"]["upstreams"][0]["queued"]
            .as_u64()
            .unwrap();
        if q > 0 {
            assert_eq!(s["sides"]["blue"]["upstreams"][0]["max_requests"], 4);
            seen_queue = true;
            break;
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let _ = python.kill();
    let _ = python.wait();
    let failed: Vec<_> = statuses
        .iter()
        .filter(|r| !matches!(r, Ok((200, b)) if b == "blue"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(seen_queue, "the queue held requests while the app worked");
}

/// An upstream at its limit: one more waits in its queue, past the queue's
/// length a request gets `503 upstream_queue_full` at once, past the queue
/// timeout `503 upstream_queue_timeout`, both with `Retry-After`; the queue
/// and its refusals show in status and /metrics; the app never sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_at_its_limit_queues_then_refuses_with_retry_after() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .proxy("upstream_max_requests = 1\nupstream_max_queue = 1\nupstream_queue_timeout = \"1s\"")
        .start();
    router.wait_all_healthy().await;
    let hold_url = router.url("/hold");
    let busy = tokio::spawn(async move { get(&h1_client(), &hold_url).await });
    wait_until(Duration::from_secs(5), "the place taken", || async {
        b.requests() == 1
    })
    .await;
    let queued_url = router.url("/queued?n=1");
    let queued = tokio::task::spawn_blocking(move || curl(&["-i", &queued_url]).1);
    wait_until(Duration::from_secs(5), "one in the queue", || async {
        router.status().await["sides"]["blue"]["upstreams"][0]["queued"] == 1
    })
    .await;
    let url = router.url("/full?n=2");
    let full = tokio::task::spawn_blocking(move || curl(&["-i", &url]).1)
        .await
        .unwrap();
    let full = full.to_ascii_lowercase();
    assert!(full.starts_with("http/1.1 503"), "{full}");
    assert!(
        full.contains("x-bluegreen-error: upstream_queue_full"),
        "{full}"
    );
    assert!(full.contains("retry-after: 1"), "{full}");
    let timed_out = queued.await.unwrap().to_ascii_lowercase();
    assert!(timed_out.starts_with("http/1.1 503"), "{timed_out}");
    assert!(
        timed_out.contains("x-bluegreen-error: upstream_queue_timeout"),
        "{timed_out}"
    );
    assert!(timed_out.contains("retry-after: 1"), "{timed_out}");
    assert_eq!(b.requests(), 1, "the app saw neither");
    let (_, metrics) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
    let refused = metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| {
            l.starts_with("bluegreen_upstream_queue_refused_total{") && l.contains("side=\"blue\"")
        })
        .map(|l| l.to_string());
    assert!(
        refused.as_deref().is_some_and(|l| l.ends_with(" 2")),
        "{refused:?}"
    );
    b.release(1);
    assert_eq!(busy.await.unwrap().unwrap().0, 200);
}
