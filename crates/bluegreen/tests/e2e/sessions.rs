//! Sessions across a switch: clients with a session on the old side stay
//! there for the window, new clients land on the new side at once, forged
//! cookies count for nothing, a rollback drops the pins, and a preview link
//! shows one browser the idle side.

use crate::support::*;
use std::time::Duration;

/// One request with `cookie` (if any); (side that answered, our cookie set).
async fn visit(router: &RouterProc, cookie: Option<&str>) -> (String, Option<String>) {
    let c = h1_client();
    let mut req = http::Request::get(router.url("/cart"));
    if let Some(v) = cookie {
        req = req.header("cookie", format!("session_id=abc; bluegreen={v}"));
    }
    let resp = c
        .request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let set = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("bluegreen="))
        .map(|v| v.split(';').next().unwrap().to_string());
    if let Some(s) = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
    {
        assert!(s.contains("HttpOnly") && s.contains("SameSite=Lax"), "{s}");
    }
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (String::from_utf8_lossy(&body).to_string(), set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_stay_on_the_old_side_for_the_window_and_new_clients_move_at_once() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra("\n[sessions]\nwindow = \"3s\"\n")
        .start();
    router.wait_all_healthy().await;

    // 200 clients start a session on blue; each gets our cookie once.
    let mut jars = Vec::new();
    for _ in 0..200 {
        let (side, set) = visit(&router, None).await;
        assert_eq!(side, "blue");
        jars.push(set.expect("a session cookie"));
    }
    let (_, again) = visit(&router, Some(&jars[0])).await;
    assert_eq!(again, None, "a current cookie is not set again");

    router.switch_to("green").await;
    let switched = std::time::Instant::now();
    for jar in &jars {
        assert_eq!(
            visit(&router, Some(jar)).await.0,
            "blue",
            "a session left blue early"
        );
    }
    // New clients, and forged cookies, go to green from the first request.
    let (side, set) = visit(&router, None).await;
    assert_eq!(side, "green");
    let new_client = set.unwrap();
    let forged = jars[0]
        .replacen("blue", "green", 1)
        .replace("green~", "blue~");
    assert_eq!(visit(&router, Some(&format!("{forged}x"))).await.0, "green");
    assert_eq!(visit(&router, Some("blue~0.0000")).await.0, "green");
    let status = router.status().await;
    assert!(
        status["sessions"]["pinned_requests"]["blue"]
            .as_u64()
            .unwrap()
            >= 200,
        "{status}"
    );

    // The window ends: everyone is on green.
    wait_until(Duration::from_secs(10), "the window to end", || async {
        visit(&router, Some(&jars[1])).await.0 == "green"
    })
    .await;
    assert!(
        switched.elapsed() >= Duration::from_millis(2900),
        "left before the window ended"
    );
    for jar in &jars[2..20] {
        assert_eq!(visit(&router, Some(jar)).await.0, "green");
    }

    // A rollback keeps nobody on the rejected side: the green sessions
    // go to blue at once.
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(visit(&router, Some(&new_client)).await.0, "blue");
    assert!(router.status().await["sessions"]["pinned_side"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn only_clients_with_the_apps_session_are_pinned_and_a_preview_link_shows_the_idle_side() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra("\n[sessions]\nwindow = \"1m\"\napp_cookie = \"session_id\"\n")
        .start();
    router.wait_all_healthy().await;

    // A preview link: the browser that follows it sees green while blue is live.
    let (code, out, err) = router.cli(&["preview-link", "--for", "10m"]);
    assert_eq!(code, 0, "{out}{err}");
    let url = out.lines().next().unwrap().to_string();
    assert!(url.contains("/.bluegreen/preview?t="), "{out}");
    let (code, landing) = curl(&["-i", &url]);
    assert_eq!(code, 0);
    assert!(landing.starts_with("HTTP/1.1 303"), "{landing}");
    let cookie = landing
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap().to_string())
        .expect("a preview cookie");
    let (_, body) = curl(&["-H", &format!("cookie: {cookie}"), &router.url("/")]);
    assert_eq!(body, "green");
    let (_, body) = curl(&[&router.url("/")]);
    assert_eq!(body, "blue");
    let (_, bad) = curl(&[
        "-i",
        &format!(
            "{}/.bluegreen/preview?t=forged.00",
            router.url("").trim_end_matches('/')
        ),
    ]);
    assert!(bad.starts_with("HTTP/1.1 404"), "{bad}");

    // app_cookie: a client without the app's session is not pinned.
    let c = h1_client();
    let first = c
        .request(
            http::Request::get(router.url("/"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let ours = first
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    router.switch_to("green").await;
    let (_, with_session) = curl(&[
        "-H",
        &format!("cookie: session_id=1; {ours}"),
        &router.url("/"),
    ]);
    assert_eq!(with_session, "blue");
    let (_, without) = curl(&["-H", &format!("cookie: {ours}"), &router.url("/")]);
    assert_eq!(without, "green");
}

/// A preview link lives its stated lifetime whatever happens meanwhile:
/// reloads (three, one of them changing nothing) and a restart. Two reloads
/// used to retire the key that signed it.
#[tokio::test(flavor = "multi_thread")]
async fn a_preview_link_outlives_any_number_of_reloads_and_a_restart() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let state = tempfile::tempdir().unwrap();
    let builder = || {
        RouterBuilder::new(&[&b], &[&g])
            .state_dir(state.path())
            .extra("\n[sessions]\nwindow = \"1m\"\n")
    };
    let router = builder().start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["preview-link", "--for", "7d"]);
    assert_eq!(code, 0, "{out}{err}");
    let url = out.lines().next().unwrap().to_string();
    let (jar_side, jar) = visit(&router, None).await;
    assert_eq!(jar_side, "blue");
    let jar = jar.unwrap();
    for _ in 0..3 {
        let (code, out, err) = router.cli(&["reload"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let follow = |url: &str| {
        let (code, landing) = curl(&["-i", url]);
        assert_eq!(code, 0);
        landing
    };
    let landing = follow(&url);
    assert!(
        landing.starts_with("HTTP/1.1 303"),
        "after 3 reloads: {landing}"
    );
    // The session cookie from before the reloads still names its side.
    router.switch_to("green").await;
    assert_eq!(visit(&router, Some(&jar)).await.0, "blue");
    drop(router);
    let router = builder().start();
    router.wait_all_healthy().await;
    let landing = follow(&url.replace(
        &url[..url.find("/.bluegreen").unwrap()],
        router.url("").trim_end_matches('/'),
    ));
    assert!(
        landing.starts_with("HTTP/1.1 303"),
        "after a restart: {landing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_inside_the_window_keeps_the_sessions_where_they_were() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let state = tempfile::tempdir().unwrap();
    let builder = || {
        RouterBuilder::new(&[&b], &[&g])
            .state_dir(state.path())
            .extra("\n[sessions]\nwindow = \"10m\"\n")
    };
    let router = builder().start();
    router.wait_all_healthy().await;
    let (side, jar) = visit(&router, None).await;
    assert_eq!(side, "blue");
    let jar = jar.unwrap();
    router.switch_to("green").await;
    // A reload rotates the key; the session still verifies.
    let (code, out, err) = router.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    drop(router);
    let router = builder().start();
    router.wait_all_healthy().await;
    assert_eq!(
        visit(&router, Some(&jar)).await.0,
        "blue",
        "the pin ended with the restart"
    );
    assert_eq!(visit(&router, None).await.0, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_keep_alive_load_200_sessions_stay_until_the_window_ends_and_new_clients_move_at_once(
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra("\n[sessions]\nwindow = \"3s\"\n")
        .start();
    router.wait_all_healthy().await;
    // 200 keep-alive clients, each keeping its cookie like a browser.
    let stop = Arc::new(AtomicBool::new(false));
    type Answers = Arc<Mutex<Vec<(usize, Instant, String)>>>;
    let answers: Answers = Arc::default();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let (stop, answers, url) = (stop.clone(), answers.clone(), router.url("/cart"));
            tokio::spawn(async move {
                let c = h1_client();
                let mut jar: Option<String> = None;
                for _ in 0..10_000 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut req = http::Request::get(&url);
                    if let Some(v) = &jar {
                        req = req.header("cookie", format!("bluegreen={v}"));
                    }
                    let resp = c
                        .request(
                            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                                .unwrap(),
                        )
                        .await
                        .expect("answered");
                    if let Some(v) = resp
                        .headers()
                        .get("set-cookie")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bluegreen="))
                    {
                        jar = Some(v.split(';').next().unwrap().to_string());
                    }
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    answers.lock().unwrap().push((
                        i,
                        Instant::now(),
                        String::from_utf8_lossy(&body).to_string(),
                    ));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "every client has a session",
        || async {
            let a = answers.lock().unwrap();
            (0..200).all(|i| a.iter().any(|(c, _, _)| *c == i))
        },
    )
    .await;
    router.switch_to("green").await;
    let switched = Instant::now();
    // New clients land on green from their first request, meanwhile.
    assert_eq!(visit(&router, None).await.0, "green");
    wait_until(Duration::from_secs(15), "the window to end", || async {
        let a = answers.lock().unwrap();
        a.iter()
            .filter(|(_, t, b)| *t > switched + Duration::from_secs(4) && b == "green")
            .count()
            > 400
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let a = std::mem::take(&mut *answers.lock().unwrap());
    // Inside the window every session stayed on blue; after it, all moved.
    let early = Duration::from_millis(2500);
    assert!(a
        .iter()
        .filter(|(_, t, _)| *t > switched && *t < switched + early)
        .all(|(_, _, b)| b == "blue"));
    assert!(a
        .iter()
        .filter(|(_, t, _)| *t > switched + Duration::from_secs(4))
        .all(|(_, _, b)| b == "green"));
    assert!(
        a.iter()
            .filter(|(_, t, _)| *t > switched && *t < switched + early)
            .count()
            > 1000
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_routers_own_error_pages_set_no_session_cookie() {
    let g = Backend::start("green").await;
    // Blue (live) has nothing listening: every live request is our 502/503.
    let router = RouterBuilder::addrs(vec![closed_port()], vec![g.addr])
        .extra("\n[sessions]\nwindow = \"1m\"\n")
        .start();
    let (_, out) = curl(&["-i", &router.url("/")]);
    assert!(out.starts_with("HTTP/1.1 50"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-bluegreen-error"),
        "{out}"
    );
    assert!(!out.to_ascii_lowercase().contains("set-cookie"), "{out}");
}
