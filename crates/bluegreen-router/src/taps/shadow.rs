//! Shadow traffic: a sampled copy of live requests goes to the idle side
//! once the live answer has been read whole, and the two answers are
//! compared. The client never waits for the copy: the live response body is
//! teed (up to a cap) as it streams, and the finished pair goes through a
//! bounded queue to a dispatcher with a concurrency limit; when the queue is
//! full the copy is dropped and counted. Off, it costs one branch per request.

use crate::control::Router;
use crate::request::headers::header_pairs;
use crate::request::{self, UpstreamBody};
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
    /// Starts the dispatcher. Copies go to the side that is idle while
    /// `live` is live; after a switch, late copies are counted as stale.
    pub(crate) fn start(router: Arc<Router>, options: ShadowOptions, live: Side) -> Arc<Shadow> {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let shadow = Arc::new(Shadow {
            methods: options
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            ignore: Ignore {
                headers: options
                    .ignore_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                paths: options.ignore_paths.iter().cloned().collect(),
            },
            live,
            started_at_ms: now_ms(),
            stopped_at_ms: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            noise_seen: AtomicU64::new(0),
            mirrored: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            noise_samples: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            tx,
            agg: Mutex::new(Aggregate::default()),
            stop: CancellationToken::new(),
            options,
        });
        tokio::spawn(dispatch(router, shadow.clone(), rx));
        shadow
    }

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

/// Takes finished pairs off the queue and runs each as a task, at most
/// `concurrency` at a time. After a stop, copies already accepted are still
/// compared: a stop must not hide how the last ones went (the pipeline
/// judges right after stopping).
async fn dispatch(router: Arc<Router>, shadow: Arc<Shadow>, mut rx: mpsc::Receiver<Job>) {
    let limit = Arc::new(Semaphore::new(shadow.options.concurrency.max(1)));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let job = tokio::select! {
            j = rx.recv() => j,
            _ = shadow.stop.cancelled() => {
                rx.close();
                rx.try_recv().ok()
            }
        };
        let Some(job) = job else { break };
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let (router, shadow) = (router.clone(), shadow.clone());
        tasks.spawn(async move {
            compare_one(&router, &shadow, job).await;
            shadow.done();
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Sends one copy to the idle side (and, sometimes, to a second live
/// upstream to learn noise), compares, and folds the result in.
async fn compare_one(router: &Router, shadow: &Shadow, job: Job) {
    let snap = router.snapshot();
    if snap.live != job.side {
        shadow.stale.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let opts = &shadow.options;
    let m = &job.mirror;
    let endpoint = diff::endpoint(m.method.as_str(), m.path.as_str());
    let mut request = format!("{} {}", m.method, m.path);
    if request.len() > SHOW_REQUEST {
        let cut = (0..=SHOW_REQUEST)
            .rev()
            .find(|&i| request.is_char_boundary(i))
            .unwrap_or(0);
        request.truncate(cut);
        request.push('…');
    }
    let live_pool = &snap.pools[job.side];
    // Noise is learned from a second live answer only for safe methods: a
    // mirrored write must never be sent to production twice.
    let safe = matches!(m.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let learn = safe && live_pool.upstreams.len() > 1 && {
        let early = shadow
            .agg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests(&endpoint)
            < NOISE_WARMUP;
        let n = shadow.noise_seen.fetch_add(1, Ordering::Relaxed);
        let per_10k = (opts.noise_percent * 100.0).round() as u64;
        early || (n * per_10k) % 10_000 < per_10k
    };
    let timeout = Duration::from_millis(opts.timeout_ms);
    let idle = fetch(
        router,
        &snap.pools[job.side.other()],
        None,
        m,
        opts,
        timeout,
    );
    let second = async {
        if learn {
            Some(fetch(router, live_pool, Some(&job.served_by), m, opts, timeout).await)
        } else {
            None
        }
    };
    let (idle, second) = tokio::join!(idle, second);

    let live = Answer {
        status: job.status,
        headers: &job.headers,
        content_type: content_type(&job.headers),
        body: &job.body,
    };
    // Compared outside the lock: the report takes noise out when it is
    // read, so nothing here needs the noise learned so far.
    let between = match &second {
        // Two live answers with different statuses are a failure, not noise.
        Some(Ok(other)) if other.status == job.status => {
            let (a, b) = comparable(&live, job.truncated, &other.answer(), other.truncated);
            Some(diff::compare(
                &endpoint,
                &a,
                &b,
                &shadow.ignore,
                &Noise::default(),
            ))
        }
        _ => None,
    };
    let outcome = idle.map(|got| {
        let (a, b) = comparable(&live, job.truncated, &got.answer(), got.truncated);
        let mut diffs = diff::compare(&endpoint, &a, &b, &shadow.ignore, &Noise::default());
        diffs.truncate(MAX_DIFFS);
        (diffs, got.latency)
    });
    let mut agg = shadow.agg.lock().unwrap_or_else(|p| p.into_inner());
    if second.is_some() {
        shadow.noise_samples.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(between) = between {
        agg.learn(&endpoint, &between);
    }
    match outcome {
        Ok((diffs, latency)) => agg.add(&endpoint, &request, diffs, job.latency, latency),
        Err(reason) => agg.add_error(&endpoint, &request, job.latency, reason),
    }
}

/// Bodies over the cap are not compared (status and headers still are).
fn comparable<'a>(
    a: &Answer<'a>,
    a_cut: bool,
    b: &Answer<'a>,
    b_cut: bool,
) -> (Answer<'a>, Answer<'a>) {
    if a_cut || b_cut {
        let strip = |x: &Answer<'a>| Answer {
            body: b"",
            content_type: None,
            ..x.clone()
        };
        (strip(a), strip(b))
    } else {
        (a.clone(), b.clone())
    }
}

fn content_type(h: &[(String, String)]) -> Option<&str> {
    h.iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
}

/// An answer from the idle side (or a second live upstream).
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    truncated: bool,
    /// To the response head, like the live side's.
    latency: Duration,
}

impl Got {
    fn answer(&self) -> Answer<'_> {
        Answer {
            status: self.status,
            headers: &self.headers,
            content_type: content_type(&self.headers),
            body: &self.body,
        }
    }
}

/// Sends the copy to one upstream of `pool` (not `exclude`), reads the
/// answer up to the cap, and returns the connection to the pool.
async fn fetch(
    router: &Router,
    pool: &Pool,
    exclude: Option<&Arc<Upstream>>,
    m: &Mirror,
    opts: &ShadowOptions,
    timeout: Duration,
) -> Result<Got, String> {
    let tried = exclude
        .and_then(|x| pool.upstreams.iter().position(|u| Arc::ptr_eq(u, x)))
        .map_or(0, |i| 1u64 << i);
    let idx = pool
        .pick(tried, false)
        .ok_or_else(|| format!("no healthy upstream on {}", pool.side))?;
    let upstream = pool.upstreams[idx].clone();
    let mut req: Request<UpstreamBody> = Request::new(Either::Right(Full::new(m.body.clone())));
    *req.method_mut() = m.method.clone();
    *req.uri_mut() = http::Uri::from(m.path.clone());
    *req.headers_mut() = m.headers.clone();
    req.headers_mut().insert(
        HeaderName::from_static(SHADOW_HEADER),
        HeaderValue::from_static("1"),
    );
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(upstream.authority.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let _claim = crate::request::body::InFlight::begin(upstream.clone(), None);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let connect = router.snapshot.load().settings.connect_timeout;
    let (resp, sender) = request::send::send_upstream(&upstream, req, connect, timeout)
        .await
        .map_err(|e| format!("{}: {e}", upstream.address))?;
    let latency = started.elapsed();
    let (parts, body) = resp.into_parts();
    let (body, truncated) =
        match tokio::time::timeout_at(deadline, read_capped(body, opts.max_response_body)).await {
            Err(_) => return Err(format!("{}: timed out reading the body", upstream.address)),
            Ok(Err(e)) => return Err(format!("{}: {e}", upstream.address)),
            Ok(Ok(b)) => b,
        };
    upstream.conns.put(sender);
    Ok(Got {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers),
        body,
        truncated,
        latency,
    })
}

/// Reads a body whole, keeping at most `cap` bytes (the rest is read and
/// thrown away, so the connection can be reused).
async fn read_capped(mut body: Incoming, cap: usize) -> Result<(Bytes, bool), String> {
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| bluegreen_core::error_chain(&e))?;
        if let Some(data) = frame.data_ref() {
            if truncated || buf.len() + data.len() > cap {
                truncated = true;
                buf.clear();
            } else {
                buf.extend_from_slice(data);
            }
        }
    }
    Ok((buf.freeze(), truncated))
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
