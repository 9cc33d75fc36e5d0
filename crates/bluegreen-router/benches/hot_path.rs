//! Micro-benchmarks of the request path's own work, without sockets.
//!
//! What they measure, and why: every request loads the routing snapshot,
//! picks an upstream, and rewrites its headers before anything reaches the
//! network. These are the parts bluegreen adds on top of hyper, so they are
//! the parts a change to the router can make slower without anyone noticing
//! in an end-to-end run. The gate in front of hyper also reads every request
//! head once to find where the request ends (`request framing`). Compare before and after a change with
//! `cargo bench -p bluegreen-router`; `bench/run` compares whole proxies.

use arc_swap::ArcSwap;
use bluegreen_core::config::Balance;
use bluegreen_core::{Side, Sides};
use bluegreen_router::downstream::{scan, Allow, Scan};
use bluegreen_router::headers::{self, RequestIds};
use bluegreen_router::pool::Pool;
use bluegreen_router::snapshot::{Epoch, Snapshot};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use std::hint::black_box;
use std::sync::Arc;

fn pool(side: Side, n: usize, balance: Balance) -> Arc<Pool> {
    let addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
    Arc::new(Pool::new(side, &addrs, balance, 2, 3, None).unwrap())
}

fn snapshot() -> ArcSwap<Snapshot> {
    ArcSwap::from_pointee(Snapshot {
        generation: 1,
        live: Side::Blue,
        pools: Sides {
            blue: pool(Side::Blue, 4, Balance::RoundRobin),
            green: pool(Side::Green, 4, Balance::RoundRobin),
        },
        epochs: Sides::from_fn(|_| Epoch::new()),
        recorder: None,
        shadow: None,
        hold: None,
        maintenance: None,
        split: None,
        sessions: None,
        pin: None,
        settings: Arc::new(bluegreen_router::settings::ProxySettings::default()),
    })
}

/// Loading the snapshot and taking what a request keeps (pool, epoch).
fn snapshot_load(c: &mut Criterion) {
    let snap = snapshot();
    c.bench_function("snapshot load + side + pool/epoch clone", |b| {
        b.iter(|| {
            let s = snap.load();
            let side = s.target(black_box(false));
            black_box((s.pools[side].clone(), s.epochs[side].clone()))
        })
    });
}

/// Picking an upstream among four healthy ones.
fn upstream_pick(c: &mut Criterion) {
    let rr = pool(Side::Blue, 4, Balance::RoundRobin);
    let lo = pool(Side::Blue, 4, Balance::LeastOutstanding);
    c.bench_function("pick round robin of 4", |b| {
        b.iter(|| black_box(rr.pick(0, true)))
    });
    c.bench_function("pick least outstanding of 4", |b| {
        b.iter(|| black_box(lo.pick(0, true)))
    });
}

/// Header work on a typical browser request and an upstream response.
fn header_rewriting(c: &mut Criterion) {
    let mut request = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abc123; theme=dark"),
    ] {
        request.insert(k, HeaderValue::from_static(v));
    }
    let mut response = HeaderMap::new();
    for (k, v) in [
        ("content-type", "text/html"),
        ("content-length", "1234"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("cache-control", "no-cache"),
    ] {
        response.insert(k, HeaderValue::from_static(v));
    }
    let ids = RequestIds::new();
    let peer = HeaderValue::from_static("127.0.0.1");
    let host = HeaderValue::from_static("shop.example");
    c.bench_function(
        "request headers: hop-by-hop + forwarded + request id",
        |b| {
            b.iter_batched(
                || request.clone(),
                |mut h| {
                    headers::strip_hop_by_hop(&mut h, false);
                    headers::set_forwarded(&mut h, &peer, "http", None, Some(host.clone()), false);
                    ids.ensure(&mut h);
                    h
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    c.bench_function("response headers: hop-by-hop", |b| {
        b.iter_batched(
            || response.clone(),
            |mut h| {
                headers::strip_hop_by_hop(&mut h, false);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The gate's parse of a request head (where it ends, how long the body is),
/// once per HTTP/1 request on top of hyper's own parse.
fn request_framing(c: &mut Criterion) {
    let head: &[u8] = b"GET /products/42?ref=home HTTP/1.1\r\n\
        Host: shop.example\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
        Accept: text/html,application/xhtml+xml\r\n\
        Accept-Language: en-GB,en;q=0.9\r\n\
        Accept-Encoding: gzip, deflate, br\r\n\
        Cookie: session=abc123; theme=dark\r\n\r\n";
    assert_eq!(
        scan(head, 65536),
        Scan::Ready(Allow::Body(head.len() as u64))
    );
    c.bench_function("request framing: a browser GET head", |b| {
        b.iter(|| black_box(scan(black_box(head), 65536)))
    });
}

criterion_group!(
    benches,
    snapshot_load,
    upstream_pick,
    header_rewriting,
    request_framing
);
criterion_main!(benches);
