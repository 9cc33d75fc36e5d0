//! Atomic switching under sustained keep-alive load.

use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Sample {
    start: Instant,
    end: Instant,
    result: Result<(u16, String), String>,
}

struct SwitchMark {
    called: Instant,
    returned: Instant,
    to: &'static str,
}

/// Runs `tasks` request loops (each with its own client from `make`) while
/// switching back and forth `switches` times, then checks every response.
async fn switch_under_load(
    make: fn() -> hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    tasks: usize,
    switches: usize,
) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let url = router.url("/chunked");
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (stop, done, url) = (stop.clone(), done.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let client = make();
            let mut samples = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            // Bounded in count and time.
            for _ in 0..200_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let start = Instant::now();
                let result = get(&client, &url).await;
                samples.push(Sample {
                    start,
                    end: Instant::now(),
                    result,
                });
                done.fetch_add(1, Ordering::SeqCst);
            }
            samples
        }));
    }

    // Switch only after real progress since the last switch.
    let mut marks = Vec::new();
    for i in 0..switches {
        let before = done.load(Ordering::SeqCst);
        wait_until(
            Duration::from_secs(20),
            "traffic progress between switches",
            || {
                let done = done.clone();
                async move { done.load(Ordering::SeqCst) >= before + 150 }
            },
        )
        .await;
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let called = Instant::now();
        if i % 2 == 0 {
            router.switch_to(to).await;
        } else {
            let (status, body) = router
                .api("POST", "/api/v1/rollback", None, Some(TOKEN))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["live"], "blue");
        }
        marks.push(SwitchMark {
            called,
            returned: Instant::now(),
            to,
        });
    }
    let before = done.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(20),
        "traffic after the last switch",
        || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) >= before + 150 }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.unwrap());
    }
    let mut failures = Vec::new();
    let mut checked = [0usize; 2];
    for s in &samples {
        let body = match &s.result {
            Ok((200, body)) => body,
            other => {
                failures.push(format!("{other:?}"));
                continue;
            }
        };
        // No mixed responses: every chunk names the same side.
        let side = body.split(':').next().unwrap_or("");
        let expected_body = format!("{side}:0;{side}:1;{side}:2;{side}:3;");
        assert_eq!(body, &expected_body, "mixed or partial body");
        // A request that started after a switch returned must be served by
        // that switch's side, or by a side a later switch made live while
        // the request was still running; one that started during a switch
        // may get either.
        let k = match marks.iter().rposition(|m| m.called <= s.start) {
            None => None,
            Some(k) if s.start > marks[k].returned => Some(k),
            Some(_) => continue,
        };
        let current = k.map(|k| marks[k].to).unwrap_or("blue");
        let later: Vec<&str> = marks[k.map(|k| k + 1).unwrap_or(0)..]
            .iter()
            .take_while(|m| m.called < s.end)
            .map(|m| m.to)
            .collect();
        assert!(
            side == current || later.contains(&side),
            "a request that began after the switch was served by the old side"
        );
        if later.is_empty() {
            checked[(current == "green") as usize] += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        checked[0] > 100 && checked[1] > 100,
        "too few checked samples: {checked:?}"
    );
    assert!(blue.requests() > 0 && green.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_under_http1_keepalive_load_drops_no_request() {
    switch_under_load(h1_client, 24, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_under_http2_load_drops_no_request() {
    switch_under_load(h2_client, 16, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_request_on_old_side_finishes_after_switch() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let client = h1_client();
    let url = router.url("/hold");
    let held = tokio::spawn(async move { get(&client, &url).await });
    wait_until(
        Duration::from_secs(5),
        "held request reached blue",
        || async { blue.requests() == 1 },
    )
    .await;

    router.switch_to("green").await;
    let (status, body) = get(&h1_client(), &router.url("/")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "green"));
    let st = router.status().await;
    assert_eq!(st["sides"]["blue"]["draining"]["remaining"], 1, "{st}");

    blue.release(1);
    let (status, body) = held.await.unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "blue"),
        "old side's in-flight request completes"
    );
    // Nothing left in it: the drain is over, whatever its deadline says.
    wait_until(
        Duration::from_secs(5),
        "the drain shown as over",
        || async { router.status().await["sides"]["blue"]["draining"].is_null() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_returns_to_the_previous_side() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;

    let (status, body) = router
        .api("POST", "/api/v1/rollback", None, Some(TOKEN))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "no_history");

    router.switch_to("green").await;
    let (status, body) = router
        .api(
            "POST",
            "/api/v1/rollback",
            Some("{\"reason\":\"bad release\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["live"], "blue");
    assert_eq!(body["record"]["kind"], "rollback");
    assert_eq!(body["record"]["reason"], "bad release");
    assert_eq!(get(&h1_client(), &router.url("/")).await.unwrap().1, "blue");

    let st = router.status().await;
    assert_eq!(st["previous"], "green");
    assert_eq!(st["generation"], 2);
    let (_, hist) = router
        .api("GET", "/api/v1/history", None, Some(TOKEN))
        .await;
    let switches = hist["switches"].as_array().unwrap();
    assert_eq!(switches.len(), 2);
    assert_eq!(switches[0]["to"], "green");
    assert_eq!(switches[1]["to"], "blue");
}
