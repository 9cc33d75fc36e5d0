//! A shadow run's moving part: copies taken off the queue are sent to the
//! idle side (and sometimes to a second live upstream, to learn noise),
//! compared with the live answer and folded into the run's report. It takes
//! the plane (the snapshot says which side is live and where to send);
//! the run itself is a field of that snapshot (`super`).

use super::*;
use crate::plane::Plane;
use crate::request::{self, UpstreamBody};

impl Shadow {
    /// Starts the dispatcher. Copies go to the side that is idle while
    /// `live` is live; after a switch, late copies are counted as stale.
    pub(crate) fn start(plane: Arc<Plane>, options: ShadowOptions, live: Side) -> Arc<Shadow> {
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
        tokio::spawn(dispatch(plane, shadow.clone(), rx));
        shadow
    }
}

/// Takes finished pairs off the queue and runs each as a task, at most
/// `concurrency` at a time. After a stop, copies already accepted are still
/// compared: a stop must not hide how the last ones went (the pipeline
/// judges right after stopping).
async fn dispatch(plane: Arc<Plane>, shadow: Arc<Shadow>, mut rx: mpsc::Receiver<Job>) {
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
        let (plane, shadow) = (plane.clone(), shadow.clone());
        tasks.spawn(async move {
            compare_one(&plane, &shadow, job).await;
            shadow.done();
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Sends one copy to the idle side (and, sometimes, to a second live
/// upstream to learn noise), compares, and folds the result in.
async fn compare_one(plane: &Plane, shadow: &Shadow, job: Job) {
    let snap = plane.snapshot();
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
    let idle = fetch(plane, &snap.pools[job.side.other()], None, m, opts, timeout);
    let second = async {
        if learn {
            Some(fetch(plane, live_pool, Some(&job.served_by), m, opts, timeout).await)
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
    plane: &Plane,
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
    let connect = plane.snapshot.load().settings.connect_timeout;
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
