//! Long-lived traffic: WebSockets across a switch, SSE without buffering.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(router: &RouterProc) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", router.proxy))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5s")
        .expect("socket open")
        .expect("no error");
    msg.into_text().unwrap().to_string()
}

/// Resolves when the socket is closed (close frame, EOF or error).
async fn closed(ws: &mut Ws) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) => return,
            Some(Ok(m)) if m.is_close() => return,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_survives_switch_until_drain_timeout() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).drain("2s").start();
    router.wait_all_healthy().await;

    let mut old = ws_connect(&router).await;
    assert_eq!(echo(&mut old, "hello").await, "blue:hello");

    let switched_at = Instant::now();
    router.switch_to("green").await;
    // The old connection keeps working on blue after the switch...
    assert_eq!(echo(&mut old, "still there").await, "blue:still there");
    // ...while new connections go to green.
    let mut new = ws_connect(&router).await;
    assert_eq!(echo(&mut new, "hi").await, "green:hi");
    let st = router.status().await;
    assert_eq!(st["sides"]["blue"]["upgraded"], 1, "{st}");
    assert_eq!(st["sides"]["green"]["upgraded"], 1, "{st}");

    // At the drain deadline the old side's connection is cut, not before.
    tokio::time::timeout(Duration::from_secs(10), closed(&mut old))
        .await
        .expect("old socket cut by the drain timeout");
    assert!(
        switched_at.elapsed() >= Duration::from_millis(1900),
        "cut before the drain timeout: {:?}",
        switched_at.elapsed()
    );
    // The live side's connection is untouched.
    assert_eq!(echo(&mut new, "after").await, "green:after");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_is_kept_when_its_side_goes_live_again_before_the_deadline() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).drain("1s").start();
    router.wait_all_healthy().await;

    let mut ws = ws_connect(&router).await;
    router.switch_to("green").await;
    router.switch_to("blue").await;
    // Proving that nothing happens at the old deadline needs the deadline to pass.
    let waited = tokio::time::timeout(Duration::from_millis(1500), closed(&mut ws)).await;
    assert!(waited.is_err(), "a connection on the live side was cut");
    assert_eq!(echo(&mut ws, "ping").await, "blue:ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_streams_through_unbuffered() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;

    let resp = h1_client()
        .get(router.url("/sse").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The upstream holds the second event back; the first must arrive anyway.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event arrives while the stream is still open")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: blue first\n\n");
    blue.release(1);
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: blue second\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_through_curl_over_http2() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    router.wait_all_healthy().await;
    let url = router.url("/sse");
    let release = tokio::spawn(async move {
        wait_until(
            Duration::from_secs(10),
            "curl's request reached blue",
            || async { blue.requests() == 1 },
        )
        .await;
        blue.release(1);
        blue
    });
    let (code, out) =
        tokio::task::spawn_blocking(move || curl(&["-N", "--http2-prior-knowledge", &url]))
            .await
            .unwrap();
    let _blue = release.await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(out, "data: blue first\n\ndata: blue second\n\n");
}
