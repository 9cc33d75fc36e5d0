//! Shadow traffic: a sampled copy of live requests goes to the idle side
//! once the live answer has been read whole, and the two answers are
//! compared. The client never waits for the copy: the live response body is
//! teed (up to a cap) as it streams, and the finished pair goes through a
//! bounded queue to a dispatcher with a concurrency limit; when the queue is
//! full the copy is dropped and counted. Off, it costs one branch per request.

mod compare;

use super::header_pairs;
use crate::upstream::pool::{Pool, Upstream};
use bluegreen_core::config::ShadowConfig;
use bluegreen_core::diff::{self, Answer, Ignore, Noise};
use bluegreen_core::shadow::{Aggregate, EndpointReport, Totals};
use bluegreen_core::Side;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// The header every mirrored request carries, so the app can skip side effects.
pub const SHADOW_HEADER: &str = "x-bluegreen-shadow";

/// Pairs on an endpoint that are always also sent to a second live upstream,
/// so noise is learned before the first differences are counted.
const NOISE_WARMUP: u64 = 5;

/// Differences kept per pair; a wholly different document would otherwise
/// produce one per field.
const MAX_DIFFS: usize = 100;

/// Request lines in examples are cut to this many bytes.
const SHOW_REQUEST: usize = 200;

/// One node's part of a shadow run the whole cluster makes (in its report
/// under `nodes/<node>`): the raw aggregate, so the deploy can add them up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowShare {
    pub run: u64,
    pub running: bool,
    pub mirrored: u64,
    pub dropped: u64,
    pub stale: u64,
    pub in_flight: u64,
    pub aggregate: Aggregate,
}

/// The cluster-wide shadow run the deploy asks every node to make
/// (`shadow.run` in the shared store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedShadow {
    pub run: u64,
    pub options: ShadowOptions,
    pub live: Side,
    pub active: bool,
    /// The node running the deploy (it holds the deploy lock): a run whose
    /// node no longer holds it is over, whatever the key still says.
    pub node: String,
    /// No part of the run goes on past this (Unix ms), even if nobody
    /// says it ended.
    pub until_ms: u64,
}

/// Largest share a node publishes; past it, examples and then field
/// detail are left out (counts and latencies always stay).
const SHARE_LIMIT: usize = 512 * 1024;

impl ShadowShare {
    /// The share as JSON, trimmed to fit [`SHARE_LIMIT`].
    pub fn to_json(&self) -> Vec<u8> {
        let bytes = serde_json::to_vec(self).expect("serialises");
        if bytes.len() <= SHARE_LIMIT {
            return bytes;
        }
        let mut lean = self.clone();
        for detail in [1, 0] {
            lean.aggregate.trim(detail);
            let bytes = serde_json::to_vec(&lean).expect("serialises");
            if bytes.len() <= SHARE_LIMIT || detail == 0 {
                return bytes;
            }
        }
        unreachable!("the loop returns")
    }
}

/// What a shadowing run is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowOptions {
    pub percent: f64,
    pub methods: Vec<String>,
    pub sticky_header: Option<String>,
    pub sticky_cookie: Option<String>,
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub ignore_headers: Vec<String>,
    pub ignore_paths: Vec<String>,
    pub concurrency: usize,
    pub queue: usize,
    pub timeout_ms: u64,
    pub noise_percent: f64,
    /// Stops by itself after this long.
    pub duration_ms: Option<u64>,
    /// Stops sampling after this many mirrored requests.
    pub requests: Option<u64>,
}

impl ShadowOptions {
    /// The config's `[shadow]` settings, with no time or count limit.
    pub fn from_config(c: &ShadowConfig) -> ShadowOptions {
        ShadowOptions {
            percent: c.percent,
            methods: c.methods.clone(),
            sticky_header: c.sticky_header.clone(),
            sticky_cookie: c.sticky_cookie.clone(),
            max_request_body: c.max_request_body,
            max_response_body: c.max_response_body,
            ignore_headers: c.ignore_headers.clone(),
            ignore_paths: c.ignore_paths.clone(),
            concurrency: c.concurrency,
            queue: c.queue,
            timeout_ms: c.timeout.as_millis() as u64,
            noise_percent: c.noise_percent,
            duration_ms: None,
            requests: None,
        }
    }
}

/// The shadow report, as the API and CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowReport {
    pub running: bool,
    pub options: ShadowOptions,
    /// The side whose answers are the reference, and the one compared with it.
    pub live_side: Side,
    pub idle_side: Side,
    pub started_at_ms: u64,
    pub stopped_at_ms: Option<u64>,
    /// Copies handed to the dispatcher.
    pub mirrored: u64,
    /// Copies dropped because the queue was full (the idle side is slow).
    pub dropped: u64,
    /// Sampled but not mirrorable: body over the cap or of unknown length,
    /// or the live answer did not complete.
    pub skipped: u64,
    /// Not sent because the live side changed before the copy went out.
    pub stale: u64,
    /// Extra requests to a second live upstream, for noise learning.
    pub noise_samples: u64,
    /// Copies sent and not yet compared.
    pub in_flight: u64,
    /// Differences accepted as intended (`bluegreen shadow accept`).
    #[serde(default)]
    pub accepted: Vec<String>,
    #[serde(flatten)]
    pub totals: Totals,
    pub endpoints: Vec<EndpointReport>,
}

/// A copy of the request as it was sent upstream.
pub struct Mirror {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
}

/// A finished live answer waiting for its idle counterpart.
struct Job {
    mirror: Mirror,
    side: Side,
    served_by: Arc<Upstream>,
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    truncated: bool,
    latency: Duration,
}

/// A running (or finished) shadowing run.
pub struct Shadow {
    pub options: ShadowOptions,
    methods: Vec<Method>,
    ignore: Ignore,
    live: Side,
    started_at_ms: u64,
    stopped_at_ms: AtomicU64,
    seen: AtomicU64,
    noise_seen: AtomicU64,
    mirrored: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    stale: AtomicU64,
    noise_samples: AtomicU64,
    finished: AtomicU64,
    tx: mpsc::Sender<Job>,
    agg: Mutex<Aggregate>,
    stop: CancellationToken,
}

impl Shadow {
    /// Whether this request is in the sample. Consistent by the sticky
    /// header or cookie when configured and present; otherwise an exact
    /// share of every 10,000 requests.
    pub fn wants(&self, method: &Method, headers: &HeaderMap) -> bool {
        if self.stop.is_cancelled() || !self.methods.contains(method) {
            return false;
        }
        if let Some(cap) = self.options.requests {
            if self.mirrored.load(Ordering::Relaxed) >= cap {
                return false;
            }
        }
        let per_10k = (self.options.percent * 100.0).round() as u64;
        match self.sticky_value(headers) {
            Some(v) => fnv1a(v) % 10_000 < per_10k,
            None => {
                let n = self.seen.fetch_add(1, Ordering::Relaxed);
                (n * per_10k) % 10_000 < per_10k
            }
        }
    }

    fn sticky_value<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        if let Some(h) = &self.options.sticky_header {
            return headers.get(h.as_str()).map(|v| v.as_bytes());
        }
        let name = self.options.sticky_cookie.as_deref()?;
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                (k == name.as_bytes()).then(|| &v[1..])
            })
    }

    /// A sampled request that cannot be mirrored (body too large or unknown).
    pub fn skip(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops sampling and the dispatcher; copies in flight still finish.
    pub(crate) fn stop(&self) {
        if !self.stop.is_cancelled() {
            self.stopped_at_ms.store(now_ms(), Ordering::Relaxed);
            self.stop.cancel();
        }
    }

    /// Resolves once stopped.
    pub async fn wait_stopped(&self) {
        self.stop.cancelled().await
    }

    /// True when a `requests` limit was reached and every copy was compared.
    pub fn complete(&self) -> bool {
        self.options
            .requests
            .is_some_and(|cap| self.mirrored.load(Ordering::Acquire) >= cap)
            && self.in_flight() == 0
    }

    /// True once stopped.
    pub fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Copies sent and not yet compared.
    pub fn in_flight(&self) -> u64 {
        self.mirrored
            .load(Ordering::Acquire)
            .saturating_sub(self.finished.load(Ordering::Acquire))
    }

    /// An intended difference, from now on and for what was counted.
    pub fn accept(&self, field: &str) {
        self.agg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(field);
    }

    /// This node's part of a cluster-wide run `run`, for its report.
    pub fn share(&self, run: u64) -> ShadowShare {
        ShadowShare {
            run,
            running: !self.stopped(),
            mirrored: self.mirrored.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            aggregate: self.agg.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// This run's report with the shares of the other nodes added: what
    /// the deploy's shadow gate judges in a cluster.
    pub fn report_with(&self, shares: &[ShadowShare]) -> ShadowReport {
        let mut r = self.report();
        if shares.is_empty() {
            return r;
        }
        let mut agg = self.agg.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for s in shares {
            agg.merge(&s.aggregate);
            r.mirrored += s.mirrored;
            r.dropped += s.dropped;
            r.stale += s.stale;
            r.in_flight += s.in_flight;
        }
        (r.totals, r.endpoints) = agg.report();
        r
    }

    /// Everything seen so far, noise taken out.
    pub fn report(&self) -> ShadowReport {
        let (totals, endpoints, accepted) = {
            let agg = self.agg.lock().unwrap_or_else(|p| p.into_inner());
            let (t, e) = agg.report();
            (t, e, agg.accepted.iter().cloned().collect())
        };
        let stopped = self.stopped_at_ms.load(Ordering::Relaxed);
        ShadowReport {
            running: !self.stopped(),
            options: self.options.clone(),
            live_side: self.live,
            idle_side: self.live.other(),
            started_at_ms: self.started_at_ms,
            stopped_at_ms: (stopped != 0).then_some(stopped),
            mirrored: self.mirrored.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            noise_samples: self.noise_samples.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            accepted,
            totals,
            endpoints,
        }
    }

    /// Hands a finished live answer to the dispatcher, or drops and counts it.
    fn submit(&self, job: Job) {
        if self.stop.is_cancelled() {
            return;
        }
        match self.tx.try_send(job) {
            Ok(()) => {
                self.mirrored.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn done(&self) {
        self.finished.fetch_add(1, Ordering::AcqRel);
    }
}

impl Mirror {
    /// Copies the upstream request head; `body` is the whole request body.
    pub fn new(method: &Method, path: &PathAndQuery, headers: &HeaderMap, body: Bytes) -> Mirror {
        Mirror {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body,
        }
    }
}

/// The live response body, copied up to the cap while it streams to the
/// client. Handed on only when the body ended cleanly.
pub struct Tee {
    shadow: Arc<Shadow>,
    job: Job,
    buf: BytesMut,
}

impl Tee {
    /// Starts teeing a live answer to `mirror`.
    pub fn new(
        shadow: Arc<Shadow>,
        mirror: Mirror,
        resp: &Response<Incoming>,
        served_by: Arc<Upstream>,
        side: Side,
        latency: Duration,
    ) -> Box<Tee> {
        Box::new(Tee {
            job: Job {
                mirror,
                side,
                served_by,
                status: resp.status().as_u16(),
                headers: header_pairs(resp.headers()),
                body: Bytes::new(),
                truncated: false,
                latency,
            },
            shadow,
            buf: BytesMut::new(),
        })
    }

    /// Copies one frame of the live body (until the cap is reached).
    pub fn push(&mut self, data: &Bytes) {
        if self.job.truncated {
            return;
        }
        if self.buf.len() + data.len() > self.shadow.options.max_response_body {
            self.job.truncated = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// The live body ended cleanly: queue the pair.
    pub fn finish(mut self: Box<Self>) {
        self.job.body = std::mem::take(&mut self.buf).freeze();
        let shadow = self.shadow.clone();
        shadow.submit(self.job);
    }

    /// The live body failed or was abandoned: nothing to compare.
    pub fn abandon(self: Box<Self>) {
        self.shadow.skip();
    }
}

/// FNV-1a: a fixed, fast hash, so a sticky value lands the same way on every
/// router and every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
