//! Switch, drain, retry and pick against an in-process router (see
//! `support`): the same code paths as the binary, in milliseconds.

mod support;

use bluegreen_core::Side;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_after_a_switch_goes_to_the_new_side_and_none_fails() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let h = Harness::start(&[blue.addr], &[green.addr], "1s").await;
    h.healthy().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(h.proxy).await);
    }
    let mut expect = Side::Blue;
    for round in 0..20 {
        for c in clients.iter_mut() {
            for _ in 0..5 {
                let got = c.get(&format!("/r{round}")).await;
                assert_eq!(got, Ok((200, expect.as_str().to_string())), "round {round}");
            }
        }
        expect = expect.other();
        h.switch(expect).await;
    }
    assert_eq!(blue.requests() + green.requests(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_finishes_on_the_old_side_after_a_switch() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let h = Harness::start(&[blue.addr], &[green.addr], "5s").await;
    h.healthy().await;
    let mut held = Client::connect(h.proxy).await;
    let task = tokio::spawn(async move { held.get("/hold").await });
    wait_until(Duration::from_secs(5), "request held", || async {
        blue.requests() == 1
    })
    .await;
    h.switch(Side::Green).await;
    let mut c = Client::connect(h.proxy).await;
    assert_eq!(c.get("/").await, Ok((200, "green".into())));
    let status = h.router.status().await;
    let drain = status.sides.blue.draining.expect("blue drains");
    assert_eq!(drain.remaining, 1);
    blue.release(1);
    assert_eq!(task.await.unwrap(), Ok((200, "blue".into())));
    // Nothing of blue's live traffic is left: status no longer shows a
    // drain (it showed an empty one until its deadline).
    wait_until(Duration::from_secs(2), "nothing left to drain", || async {
        h.router.status().await.sides.blue.draining.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_tried_once_then_skipped_by_passive_marking() {
    let alive = Backend::start("alive").await;
    let doomed = Backend::start("doomed").await;
    let green = Backend::start("green").await;
    let dead_addr = doomed.addr;
    let h = Harness::start(&[dead_addr, alive.addr], &[green.addr], "1s").await;
    h.healthy().await;
    drop(doomed);
    wait_until(Duration::from_secs(5), "port closed", || async {
        tokio::net::TcpStream::connect(dead_addr).await.is_err()
    })
    .await;
    let mut c = Client::connect(h.proxy).await;
    for i in 0..10 {
        assert_eq!(
            c.get(&format!("/{i}")).await,
            Ok((200, "alive".into())),
            "request {i}"
        );
    }
    let status = h.router.status().await;
    let dead = status
        .sides
        .blue
        .upstreams
        .iter()
        .find(|u| u.address == dead_addr.to_string())
        .unwrap();
    assert_eq!(dead.health, bluegreen_core::health::Health::Unhealthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_healthy_upstreams() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c3 = Backend::start("c").await;
    let green = Backend::start("green").await;
    let h = Harness::start(&[a.addr, b.addr, c3.addr], &[green.addr], "1s").await;
    wait_until(Duration::from_secs(5), "all blue healthy", || async {
        h.router.status().await.sides.blue.healthy == 3
    })
    .await;
    let mut c = Client::connect(h.proxy).await;
    for i in 0..30 {
        assert_eq!(c.get(&format!("/{i}")).await.unwrap().0, 200);
    }
    assert_eq!((a.requests(), b.requests(), c3.requests()), (10, 10, 10));
}
