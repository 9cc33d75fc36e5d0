//! The preview listener serves the idle side only, and never falls back.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn preview_always_routes_to_the_idle_side() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let c = h1_client();
    assert_eq!(
        get(&c, &router.preview_url("/")).await.unwrap(),
        (200, "green".into())
    );
    assert_eq!(
        get(&c, &router.url("/")).await.unwrap(),
        (200, "blue".into())
    );
    router.switch_to("green").await;
    assert_eq!(
        get(&c, &router.preview_url("/")).await.unwrap(),
        (200, "blue".into())
    );
    assert_eq!(
        get(&c, &router.url("/")).await.unwrap(),
        (200, "green".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_answers_503_when_the_idle_side_is_down() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    green.set_healthy(false);
    wait_until(
        Duration::from_secs(10),
        "green marked unhealthy",
        || async { router.status().await["sides"]["green"]["healthy"] == 0 },
    )
    .await;
    let before = green.requests();
    let (code, out) = curl(&["-i", &router.preview_url("/")]);
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.contains("x-bluegreen-error: no_healthy_upstream"),
        "{out}"
    );
    assert!(
        out.contains("no healthy upstream in the green side (preview)"),
        "{out}"
    );
    assert_eq!(
        green.requests(),
        before,
        "preview never sends to an unhealthy idle side"
    );
    assert_eq!(
        blue.requests(),
        0,
        "preview never falls back to the live side"
    );
    // Live traffic is unaffected.
    assert_eq!(
        get(&h1_client(), &router.url("/")).await.unwrap(),
        (200, "blue".into())
    );
}
