//! SIGTERM: stop accepting, finish in-flight requests, exit.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = RouterBuilder::new(&[&blue], &[&green]).drain("10s").start();
    router.wait_all_healthy().await;
    let client = h1_client();
    let url = router.url("/hold");
    let held = tokio::spawn(async move { get(&client, &url).await });
    wait_until(Duration::from_secs(5), "request in flight", || async {
        blue.requests() == 1
    })
    .await;

    router.signal("TERM");
    let proxy = router.proxy;
    wait_until(Duration::from_secs(5), "listener closed", || async move {
        tokio::net::TcpStream::connect(proxy).await.is_err()
    })
    .await;
    assert!(
        router.child.try_wait().unwrap().is_none(),
        "still running while a request is in flight"
    );

    blue.release(1);
    assert_eq!(held.await.unwrap().unwrap(), (200, "blue".into()));
    let status = router.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", router.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_the_router_keeps_serving() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let client = h1_client();
    // Three SIGHUPs, each a reload of an unchanged file.
    for n in 1..=3 {
        router.signal("HUP");
        wait_until(Duration::from_secs(5), "the reload logged", || async {
            router.stderr().matches("nothing to change").count() >= n
        })
        .await;
    }
    assert!(
        router.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the router:\n{}",
        router.stderr()
    );
    assert_eq!(
        get(&client, &router.url("/")).await.unwrap(),
        (200, "blue".into())
    );
    assert!(
        !router.stderr().contains('\u{1b}'),
        "no colour codes when stderr is not a terminal"
    );
    router.signal("TERM");
    assert!(router.wait_exit(Duration::from_secs(10)).success());
}
