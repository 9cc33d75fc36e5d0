//! Load generators written for what wrk cannot tell: which side answered each
//! request (switching), latency at a fixed rate measured from when each
//! request was due (no coordinated omission), many idle connections, and
//! WebSockets across a switch. Each runs in its own thread and runtime so the
//! caller can switch the proxy meanwhile.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What one request got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Blue,
    Green,
    /// A status other than 2xx.
    Status(u16),
    /// Connection refused or reset, or a broken response.
    Error,
}

/// One request of the switching run.
pub struct Sample {
    pub start: Instant,
    pub end: Instant,
    pub answer: Answer,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(addr: SocketAddr) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(send)
}

async fn one(send: &mut http1::SendRequest<Empty<Bytes>>, addr: SocketAddr, path: &str) -> Answer {
    if send.ready().await.is_err() {
        return Answer::Error;
    }
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())
        .expect("request");
    match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.into_body().collect().await {
                Ok(b) if (200..300).contains(&status) => match &b.to_bytes()[..] {
                    b"blue\n" => Answer::Blue,
                    b"green\n" => Answer::Green,
                    _ => Answer::Status(status),
                },
                Ok(_) => Answer::Status(status),
                Err(_) => Answer::Error,
            }
        }
        Err(_) => Answer::Error,
    }
}

/// `conns` keep-alive connections sending requests back to back until
/// `until`, recording every answer. Reconnects after an error.
pub fn closed_loop(addr: SocketAddr, conns: usize, until: Instant) -> JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let tasks: Vec<_> = (0..conns)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        let mut send = None;
                        // Bounded by time and by count.
                        for _ in 0..5_000_000u64 {
                            if Instant::now() >= until {
                                break;
                            }
                            let start = Instant::now();
                            if send.is_none() {
                                send = connect(addr).await;
                            }
                            let answer = match &mut send {
                                Some(s) => one(s, addr, "/").await,
                                None => Answer::Error,
                            };
                            if answer == Answer::Error {
                                send = None;
                            }
                            out.push(Sample {
                                start,
                                end: Instant::now(),
                                answer,
                            });
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            all
        })
    })
}

/// Latency at a fixed request rate: each of `conns` connections sends at
/// `rate / conns` per second; latency counts from when a request was due.
pub fn fixed_rate(
    addr: SocketAddr,
    rate: u64,
    conns: usize,
    duration: Duration,
) -> (Histogram<u64>, u64) {
    runtime().block_on(async move {
        let start = Instant::now() + Duration::from_millis(100);
        let per_conn = (rate as f64 / conns as f64).max(1.0);
        let interval = Duration::from_secs_f64(1.0 / per_conn);
        let count = (duration.as_secs_f64() * per_conn) as u64;
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                tokio::spawn(async move {
                    let mut h =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                    let mut errors = 0;
                    let mut send = connect(addr).await;
                    let offset = interval.mul_f64(c as f64 / conns as f64);
                    for i in 0..count {
                        let due = start + offset + interval.mul_f64(i as f64);
                        tokio::time::sleep_until(due.into()).await;
                        if send.is_none() {
                            send = connect(addr).await;
                        }
                        let ok = match &mut send {
                            Some(s) => {
                                matches!(one(s, addr, "/").await, Answer::Blue | Answer::Green)
                            }
                            None => false,
                        };
                        if !ok {
                            errors += 1;
                            send = None;
                        }
                        let _ = h.record(due.elapsed().as_micros().max(1) as u64);
                    }
                    (h, errors)
                })
            })
            .collect();
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut errors = 0;
        for t in tasks {
            if let Ok((h, e)) = t.await {
                let _ = all.add(&h);
                errors += e;
            }
        }
        (all, errors)
    })
}

/// Opens `n` keep-alive connections, each with one request answered, and
/// holds them until the returned sender is dropped or sent to. The first
/// message on the receiver says how many are open.
pub fn hold_idle(
    addr: SocketAddr,
    n: usize,
) -> (mpsc::Receiver<usize>, mpsc::Sender<()>, JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut held = Vec::with_capacity(n);
            let mut batch = Vec::new();
            for _ in 0..n {
                batch.push(tokio::spawn(async move {
                    let mut s = connect(addr).await?;
                    matches!(one(&mut s, addr, "/").await, Answer::Blue | Answer::Green)
                        .then_some(s)
                }));
                if batch.len() == 256 {
                    for t in batch.drain(..) {
                        if let Ok(Some(s)) = t.await {
                            held.push(s);
                        }
                    }
                }
            }
            for t in batch {
                if let Ok(Some(s)) = t.await {
                    held.push(s);
                }
            }
            let _ = ready_tx.send(held.len());
            let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
            drop(held);
        })
    });
    (ready_rx, release_tx, handle)
}

/// Opens `n` WebSockets through the proxy, signals `ready`, waits for `go`
/// (the caller switches in between), then counts the sockets that still echo.
pub fn websockets(
    addr: SocketAddr,
    n: usize,
) -> (mpsc::Receiver<usize>, mpsc::Sender<()>, JoinHandle<usize>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut socks = Vec::new();
            for _ in 0..n {
                if let Ok((mut ws, _)) =
                    tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await
                {
                    if ws.send("hello".into()).await.is_ok()
                        && tokio::time::timeout(Duration::from_secs(2), ws.next())
                            .await
                            .is_ok()
                    {
                        socks.push(ws);
                    }
                }
            }
            let _ = ready_tx.send(socks.len());
            let _ = tokio::task::spawn_blocking(move || go_rx.recv()).await;
            let mut alive = 0;
            for ws in &mut socks {
                if ws.send("after the switch".into()).await.is_ok() {
                    if let Ok(Some(Ok(m))) =
                        tokio::time::timeout(Duration::from_secs(2), ws.next()).await
                    {
                        if m.is_text() {
                            alive += 1;
                        }
                    }
                }
            }
            alive
        })
    });
    (ready_rx, go_tx, handle)
}
