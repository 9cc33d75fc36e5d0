//! Client keep-alive: idle connections give up their buffers (parked) and
//! come back for the next request; pipelined, split, chunked and slow request
//! heads still get exactly the answers they would without parking.

use crate::observe::scrape;
use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Blue live with one upstream, green idle, both healthy; `proxy` adds keys
/// to `[proxy]`.
async fn start(proxy: Option<&str>) -> (Backend, Backend, RouterProc) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut builder = RouterBuilder::new(&[&blue], &[&green]).drain("30s");
    if let Some(keys) = proxy {
        builder = builder.proxy(keys);
    }
    let router = builder.start();
    router.wait_all_healthy().await;
    (blue, green, router)
}

/// Writes `bytes` to `s` in one call.
async fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.expect("writing to the router");
}

/// Client connections of the live listener in `state` (`busy` or `idle`).
async fn clients(router: &RouterProc, state: &str) -> f64 {
    scrape(router)
        .await
        .into_iter()
        .find(|(name, l, _)| {
            name == "bluegreen_client_connections"
                && l.get("listener").map(String::as_str) == Some("live")
                && l.get("state").map(String::as_str) == Some(state)
        })
        .map(|(_, _, v)| v)
        .expect("bluegreen_client_connections{listener=\"live\"} is exported")
}

/// Reads `n` whole responses (each with a `Content-Length`) off `s`:
/// (status, body) in the order they came.
async fn responses(s: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
    let read = async {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while out.len() < n {
            // Take every whole response already in `buf`.
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) else {
                    break;
                };
                let len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .expect("a content-length");
                if buf.len() < head + len {
                    break;
                }
                let code = resp.code.unwrap();
                out.push((
                    code,
                    String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
                ));
                buf.drain(..head + len);
            }
            if out.len() == n {
                break;
            }
            let got = s.read(&mut chunk).await.expect("reading responses");
            assert!(
                got > 0,
                "connection closed after {} of {n} responses",
                out.len()
            );
            buf.extend_from_slice(&chunk[..got]);
        }
        out
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("responses within 10 s")
}

/// True once the peer closed `s` (EOF or reset), waiting at most 10 s.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keepalive_connection_parks_and_serves_again() {
    let (blue, _green, router) = start(None).await;

    let mut s = TcpStream::connect(router.proxy).await.unwrap();
    let rounds: [(&[u8], &str); 3] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "blue"),
        // A stray line end after a body (RFC 9112 says to ignore it) must
        // not keep the connection from parking.
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab\r\n",
            "blue:ab",
        ),
        (b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", "blue"),
    ];
    for (round, (request, answer)) in rounds.into_iter().enumerate() {
        send(&mut s, request).await;
        assert_eq!(
            responses(&mut s, 1).await,
            [(200, answer.to_string())],
            "round {round}"
        );
        // Answered and quiet: the connection holds only its socket now.
        wait_until(Duration::from_secs(5), "connection parked", || async {
            clients(&router, "idle").await == 1.0
        })
        .await;
        assert_eq!(clients(&router, "busy").await, 0.0);
    }

    // A request on its way keeps it busy.
    send(&mut s, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n").await;
    wait_until(Duration::from_secs(5), "connection busy", || async {
        clients(&router, "busy").await == 1.0
    })
    .await;
    assert_eq!(clients(&router, "idle").await, 0.0);
    blue.release(1);
    assert_eq!(responses(&mut s, 1).await, [(200, "blue".to_string())]);
    drop(s);
    wait_until(Duration::from_secs(5), "connection gone", || async {
        clients(&router, "idle").await + clients(&router, "busy").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    let (_blue, _green, router) = start(None).await;

    // Four requests in one write, a body in the middle.
    let mut s = TcpStream::connect(router.proxy).await.unwrap();
    send(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /echo HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(
        responses(&mut s, 4).await,
        [
            (200, "blue".to_string()),
            (200, "blue:hello".to_string()),
            (200, "blue:".to_string()),
            (200, "blue:abc".to_string()),
        ]
    );

    // The same again with every byte in its own write: heads and bodies
    // split anywhere.
    let msg: &[u8] = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd\
                       GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for b in msg {
        s.write_all(std::slice::from_ref(b)).await.unwrap();
        s.flush().await.unwrap();
    }
    assert_eq!(
        responses(&mut s, 2).await,
        [(200, "blue:abcd".to_string()), (200, "blue".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_and_expect_continue_requests_keep_the_connection_working() {
    let (_blue, _green, router) = start(None).await;

    let mut s = TcpStream::connect(router.proxy).await.unwrap();
    // Chunked: the gate leaves framing to hyper from here on.
    send(
        &mut s,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(
        responses(&mut s, 2).await,
        [(200, "blue:abcde".to_string()), (200, "blue".to_string())]
    );

    // Expect: 100-continue on a fresh connection: the body only after the 100.
    let mut s = TcpStream::connect(router.proxy).await.unwrap();
    send(
        &mut s,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("100 Continue within 10 s")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    send(&mut s, b"okGET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        responses(&mut s, 2).await,
        [(200, "blue:ok".to_string()), (200, "blue".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_that_never_ends_is_cut_off() {
    let (blue, _green, router) = start(Some("idle_timeout = \"300ms\"")).await;

    // On a fresh connection and on one that already served a request.
    let mut fresh = TcpStream::connect(router.proxy).await.unwrap();
    send(&mut fresh, b"GET / HTTP/1.1\r\nHost").await;
    let mut used = TcpStream::connect(router.proxy).await.unwrap();
    send(&mut used, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(responses(&mut used, 1).await, [(200, "blue".to_string())]);
    send(&mut used, b"GET / HTTP/1.1\r\nHo").await;

    assert!(closed(&mut fresh).await, "a fresh slow head stays open");
    assert!(closed(&mut used).await, "a slow second head stays open");
    assert_eq!(blue.requests(), 1, "nothing half-read was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_parked_connections_at_once_and_finishes_busy_ones() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = RouterBuilder::new(&[&blue], &[&green]).drain("30s").start();
    router.wait_all_healthy().await;

    let mut idle = TcpStream::connect(router.proxy).await.unwrap();
    send(&mut idle, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(responses(&mut idle, 1).await, [(200, "blue".to_string())]);
    let mut busy = TcpStream::connect(router.proxy).await.unwrap();
    send(&mut busy, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n").await;
    wait_until(Duration::from_secs(5), "one parked, one busy", || async {
        clients(&router, "idle").await == 1.0 && blue.requests() == 2
    })
    .await;

    router.signal("TERM");
    assert!(closed(&mut idle).await, "the parked connection stays open");
    assert!(
        router.child.try_wait().unwrap().is_none(),
        "exited while a request was in flight"
    );
    blue.release(1);
    let answer = responses(&mut busy, 1).await;
    assert_eq!(answer, [(200, "blue".to_string())]);
    let status = router.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", router.stderr());
}
