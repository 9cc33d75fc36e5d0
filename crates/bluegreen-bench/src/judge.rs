//! The judge's error rates (issue 26): synthetic releases replayed through
//! the bake's real judge (`bluegreen_core::bake::BakeWindows`), pure and in
//! process, seeded. Good releases come from the baseline's own
//! distributions (with per-window noise and the baseline taken at another
//! time of day); bad ones are slower, fail more, or answer 401 to a quarter
//! of the requests. Counted for the judge as it was before the error tests
//! (its error-rate point check emulated here: [`PointRule`]) and for the
//! judge as shipped (the thresholds from the real config validation):
//! false rollbacks among the good, bad releases caught, by which check, and
//! how many windows and requests the catch took.
//!
//! The model (all numbers here, stated in the report):
//! - latency: log-normal, median 20 ms, sigma 0.5, with 2 % of requests from
//!   a slow path (median 100 ms, sigma 0.7); 4xx are answered fast (median
//!   2 ms); every answer is timed;
//! - 5xx rate 0.2 %, 4xx rate 3 % (a quarter 401, 5 % 403, 40 % 404, 5 % 429);
//! - per window: traffic x exp(0.1 N), latency x exp(0.05 N), 5xx rate
//!   x exp(0.3 N), 4xx rate x exp(0.15 N);
//! - the baseline (the old side's traffic before the switch: 6 windows'
//!   worth) is from another time of day: its latency x U[0.9, 1.1], its 5xx
//!   and 4xx rates x log-U[0.8, 1.25];
//! - the bake: 12 windows (the default 60 s bake in 5 s windows), looked at
//!   every 100 ms (50 looks a window, as the pipeline does) or only at each
//!   window's end.

use bluegreen_core::bake::{self, BakeWindows, Thresholds, Verdict, Window, WindowEnd};
use bluegreen_core::config::Config;
use bluegreen_core::counts;
use bluegreen_core::latency::bucket;
use bluegreen_core::rank::upper_tail;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

/// splitmix64: small, seeded, good enough for a simulation.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
}

// The service.
const MEDIAN_US: f64 = 20_000.0;
const SIGMA: f64 = 0.5;
const SLOW_SHARE: f64 = 0.02;
const SLOW_MEDIAN_US: f64 = 100_000.0;
const SLOW_SIGMA: f64 = 0.7;
const CLIENT_MEDIAN_US: f64 = 2_000.0;
const ERROR_RATE: f64 = 0.002;
const CLIENT_RATE: f64 = 0.03;
/// Shares of the 4xx: 401, 403, 404, 429 (`bake::NAMED_4XX`); the rest unnamed.
const NAMED_SHARES: [f64; 4] = [0.25, 0.05, 0.40, 0.05];
// Noise per window and drift between the baseline and the bake.
const TRAFFIC_JITTER: f64 = 0.1;
const LATENCY_JITTER: f64 = 0.05;
const ERROR_JITTER: f64 = 0.3;
const CLIENT_JITTER: f64 = 0.15;
const LATENCY_DRIFT: (f64, f64) = (0.9, 1.1);
const RATE_DRIFT: (f64, f64) = (0.8, 1.25);
/// The baseline holds this many windows' worth of the old side's traffic.
const BASELINE_WINDOWS: u64 = 6;
/// The default bake: 60 s in 5 s windows, looked at every 100 ms.
const BAKE_WINDOWS: u32 = 12;
const LOOKS: u64 = 50;

/// What a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Good,
    /// p99 +30 %: every latency x 1.3.
    SlowAll,
    /// p99 +30 %: only the slowest tenth slower, the median unchanged.
    SlowTail,
    /// 5xx rate +0.5 points.
    Errors,
    /// CPU +40 %: nothing a window holds changes.
    Cpu,
    /// +25 points of 401.
    Surge401,
}

pub const BAD: [Kind; 5] = [
    Kind::SlowAll,
    Kind::SlowTail,
    Kind::Errors,
    Kind::Surge401,
    Kind::Cpu,
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::SlowAll => "p99 +30 % (all x 1.3)",
            Kind::SlowTail => "p99 +30 % (tail only)",
            Kind::Errors => "5xx +0.5 pt",
            Kind::Cpu => "CPU +40 %",
            Kind::Surge401 => "401 +25 pt",
        }
    }

    /// Whether a window judge can see it at all.
    fn judged(self) -> bool {
        self != Kind::Cpu
    }
}

/// The latency mixture's CDF (2xx/5xx: main and slow path; 4xx: fast), at
/// the baseline's rates.
fn cdf(us: f64) -> f64 {
    let phi = |median: f64, sigma: f64| 1.0 - upper_tail((us.ln() - median.ln()) / sigma);
    let served =
        (1.0 - SLOW_SHARE) * phi(MEDIAN_US, SIGMA) + SLOW_SHARE * phi(SLOW_MEDIAN_US, SLOW_SIGMA);
    (1.0 - CLIENT_RATE) * served + CLIENT_RATE * phi(CLIENT_MEDIAN_US, SIGMA)
}

fn quantile(q: f64) -> f64 {
    let (mut lo, mut hi) = (1.0f64, 1e8f64);
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        if cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo * hi).sqrt()
}

/// The tail-only slowdown: above the p90 `t`, `x -> t (x / t)^gamma`, with
/// gamma such that the p99 is 1.3 x; the median does not move.
#[derive(Clone, Copy)]
struct Tail {
    t: f64,
    gamma: f64,
}

impl Tail {
    fn new() -> Tail {
        let (t, p99) = (quantile(0.90), quantile(0.99));
        Tail {
            t,
            gamma: 1.0 + 1.3f64.ln() / (p99 / t).ln(),
        }
    }
}

/// One stretch of traffic's parameters.
#[derive(Clone, Copy)]
struct Traffic {
    latency: f64,
    errors: f64,
    client: f64,
    surge: f64,
    kind: Kind,
    tail: Tail,
}

impl Traffic {
    /// One answered request added to cumulative counters.
    fn request(&self, rng: &mut Rng, w: &mut Window) {
        w.requests += 1;
        let u = rng.uniform();
        let us = if u < self.surge {
            w.client_errors += 1;
            w.named_4xx[0] += 1;
            rng.lognormal(CLIENT_MEDIAN_US, SIGMA)
        } else if u < self.surge + self.client {
            w.client_errors += 1;
            let mut v = rng.uniform();
            for (i, share) in NAMED_SHARES.iter().enumerate() {
                if v < *share {
                    w.named_4xx[i] += 1;
                    break;
                }
                v -= share;
            }
            rng.lognormal(CLIENT_MEDIAN_US, SIGMA)
        } else {
            if u < self.surge + self.client + self.errors {
                w.errors += 1;
            }
            if rng.uniform() < SLOW_SHARE {
                rng.lognormal(SLOW_MEDIAN_US, SLOW_SIGMA)
            } else {
                rng.lognormal(MEDIAN_US, SIGMA)
            }
        };
        let mut us = us * self.latency;
        match self.kind {
            Kind::SlowAll => us *= 1.3,
            Kind::SlowTail if us > self.tail.t => {
                us = self.tail.t * (us / self.tail.t).powf(self.tail.gamma)
            }
            _ => {}
        }
        w.latency.counts[bucket(Duration::from_micros(us as u64))] += 1;
    }
}

/// The bake's thresholds and `consecutive` as shipped: the real config
/// validation (`bluegreen_core::config::Config::parse`, which fills in
/// `config/deploy.rs`'s defaults) of a minimal config whose `[deploy.bake]`
/// sets only bluegreen.toml's `p99_ratio = 1.5`.
pub fn shipped() -> (Thresholds, u32) {
    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
preview_listen = "127.0.0.1:8081"

[admin]
listen = "127.0.0.1:9901"
token_env = "BLUEGREEN_TOKEN"

[state]
dir = ".bluegreen"

[environments.blue]
upstreams = ["127.0.0.1:9001"]

[environments.green]
upstreams = ["127.0.0.1:9002"]

[deploy.hooks]
deploy = "true"

[deploy.bake]
p99_ratio = 1.5
"#;
    let cfg = Config::parse(MINIMAL, "bench.toml", Path::new("/tmp"))
        .unwrap_or_else(|e| panic!("the bench's minimal config: {e}"));
    let bake = cfg.deploy.expect("[deploy] is set").bake;
    (bake.thresholds, bake.consecutive)
}

/// The judge before the error tests (main's bake.rs up to the commit
/// "Error rates judged with evidence"): an error-rate *point* check
/// ([`PointRule`], emulated here since core no longer has it) at every
/// 100 ms look, and at window ends `p99_ratio 1.5` (bluegreen.toml) and
/// `max_4xx_increase 0.2`; no `error_rate_ratio`, no rank test,
/// `consecutive 2`. These are the core thresholds left to core's `judge`
/// at window ends; its error tests are switched off (`max_error_rate 1`,
/// no ratio: nothing is significantly above 100 %), the point rule stands
/// in for them.
pub fn before() -> (Thresholds, PointRule, u32) {
    let t = Thresholds {
        min_requests: 20,
        max_error_rate: 1.0,
        significance: 0.001,
        max_p99: None,
        error_rate_ratio: None,
        p99_ratio: Some(1.5),
        max_4xx_increase: Some(0.2),
        latency_shift: None,
    };
    (
        t,
        PointRule {
            min_requests: 20,
            max_error_rate: 0.01,
        },
        2,
    )
}

/// An emulation of the old error-rate check, exactly as `bake::judge` had
/// it before "Error rates judged with evidence" (and `BakeWindows::observe`
/// ran `judge` at every look, acting on an error-rate breach at once): over
/// the open window (since the last closed one), once it has
/// `min_requests`, a breach when `errors / requests > max_error_rate`. No
/// statistics: one 5xx among a window's first 100 requests is above 1 %.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointRule {
    pub min_requests: u64,
    pub max_error_rate: f64,
}

impl PointRule {
    pub fn breached(&self, window: &Window) -> bool {
        window.requests >= self.min_requests.max(1) && window.error_rate() > self.max_error_rate
    }
}

/// A rollback: in which window (1-based), after how many bake requests, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub window: u32,
    pub requests: u64,
    pub metric: String,
}

/// A judge: core thresholds, `consecutive`, and for the old judge the
/// emulated point check in place of core's error tests.
#[derive(Debug, Clone)]
pub struct Judge {
    pub name: &'static str,
    pub thresholds: Thresholds,
    pub consecutive: u32,
    pub point: Option<PointRule>,
    /// Whether the test against the baseline's error rate is told the
    /// baseline's dispersion (as the pipeline does) or assumes 1.
    pub dispersion: bool,
}

pub const BEFORE: &str = "before (point rules)";
pub const NOW: &str = "now (as shipped)";
pub const VARIANT: &str = "variant: now, without the dispersion correction";

/// The judges compared: before the error tests, and as shipped.
pub fn judges() -> Vec<Judge> {
    let (thresholds, point, consecutive) = before();
    let (now, now_consecutive) = shipped();
    vec![
        Judge {
            name: BEFORE,
            thresholds,
            consecutive,
            point: Some(point),
            dispersion: false,
        },
        Judge {
            name: NOW,
            thresholds: now.clone(),
            consecutive: now_consecutive,
            point: None,
            dispersion: true,
        },
        // The shipped judge with the baseline's dispersion taken as 1: the
        // test against the baseline's rate as a plain binomial.
        Judge {
            name: VARIANT,
            thresholds: now,
            consecutive: now_consecutive,
            point: None,
            dispersion: false,
        },
    ]
}

/// One judge replaying one release.
struct Replay {
    thresholds: Thresholds,
    point: Option<PointRule>,
    mid_window: bool,
    windows: BakeWindows,
    /// Where `windows`' open window began (for the point rule): moved on
    /// when a window closes (passed, or a latency strike), as `BakeWindows`
    /// does; a window too small to judge grows on.
    opened_at: Window,
    rollback: Option<Rollback>,
}

impl Replay {
    fn new(judge: &Judge, mid_window: bool, dispersion: f64) -> Replay {
        let windows = BakeWindows::new(Window::default(), judge.consecutive);
        Replay {
            thresholds: judge.thresholds.clone(),
            point: judge.point,
            mid_window,
            windows: if judge.dispersion {
                windows.with_dispersion(dispersion)
            } else {
                windows
            },
            opened_at: Window::default(),
            rollback: None,
        }
    }

    /// `now`: the bake's counters so far (it began at zero).
    fn look(&mut self, now: &Window, baseline: &Window, closing: bool, window: u32) {
        if self.rollback.is_some() || (!closing && !self.mid_window) {
            return;
        }
        let mut metric = None;
        if let Some(rule) = self.point {
            let open = now.since(&self.opened_at);
            if rule.breached(&open) {
                metric = Some("error_rate".to_string());
            } else if closing {
                // Whether BakeWindows closes the window (it does on a pass
                // or a latency breach; a too-small one grows on): core's
                // own judge, pure, asked the same question.
                if matches!(
                    bake::judge(&open, Some(baseline), &self.thresholds),
                    Verdict::Pass | Verdict::Breach(_)
                ) {
                    self.opened_at = now.clone();
                }
            }
        }
        // Core's windows: the real judge (for the old judge, its error
        // tests are off and only window ends can breach).
        if metric.is_none() && (closing || self.point.is_none()) {
            if let WindowEnd::Breach(b) =
                self.windows
                    .observe(now, Some(baseline), &self.thresholds, closing)
            {
                metric = Some(b.metric);
            }
        }
        if let Some(metric) = metric {
            self.rollback = Some(Rollback {
                window,
                requests: now.requests,
                metric,
            });
        }
    }
}

/// Replays one release (`kind`, number `i`) at `per_window` requests a
/// window through every judge, with and without looks inside windows:
/// `[judge][0 = mid-window looks, 1 = window ends only]`.
pub fn release(
    kind: Kind,
    i: u64,
    per_window: u64,
    judges: &[Judge],
) -> Vec<[Option<Rollback>; 2]> {
    let kind_no = [
        Kind::Good,
        Kind::SlowAll,
        Kind::SlowTail,
        Kind::Errors,
        Kind::Cpu,
        Kind::Surge401,
    ]
    .iter()
    .position(|k| *k == kind)
    .unwrap_or(0) as u64;
    // The most requests any judge's error check waits for (see the looks).
    let min_requests = judges
        .iter()
        .map(|j| (j.thresholds.min_requests).max(j.point.map_or(0, |p| p.min_requests)))
        .max()
        .unwrap_or(0);
    let mut rng = Rng::new(0x5EED ^ (kind_no << 40) ^ (per_window << 20) ^ i);
    let tail = Tail::new();
    let drift =
        |rng: &mut Rng, (lo, hi): (f64, f64)| (lo.ln() + rng.uniform() * (hi.ln() - lo.ln())).exp();
    // The baseline: the old side, at another time of day.
    let base = Traffic {
        latency: LATENCY_DRIFT.0 + rng.uniform() * (LATENCY_DRIFT.1 - LATENCY_DRIFT.0),
        errors: ERROR_RATE * drift(&mut rng, RATE_DRIFT),
        client: CLIENT_RATE * drift(&mut rng, RATE_DRIFT),
        surge: 0.0,
        kind: Kind::Good,
        tail,
    };
    let mut baseline = Window::default();
    // Its windows' 5xx, for its dispersion (the pipeline's: the old side's
    // last minute in bake-window slices).
    let mut slices = Vec::new();
    for _ in 0..BASELINE_WINDOWS {
        let w = jittered(&mut rng, &base);
        let n = traffic(&mut rng, per_window);
        let before = baseline.clone();
        for _ in 0..n {
            w.request(&mut rng, &mut baseline);
        }
        let slice = baseline.since(&before);
        slices.push((slice.errors, slice.requests));
    }
    let dispersion = counts::dispersion(&slices);
    let new = Traffic {
        latency: 1.0,
        errors: ERROR_RATE,
        client: CLIENT_RATE,
        surge: if kind == Kind::Surge401 { 0.25 } else { 0.0 },
        kind,
        tail,
    };
    let mut replays: Vec<[Replay; 2]> = judges
        .iter()
        .map(|t| {
            [
                Replay::new(t, true, dispersion),
                Replay::new(t, false, dispersion),
            ]
        })
        .collect();
    let mut now = Window::default();
    for window in 1..=BAKE_WINDOWS {
        let mut w = jittered(&mut rng, &new);
        if kind == Kind::Errors {
            w.errors += 0.005;
        }
        let n = traffic(&mut rng, per_window);
        let start = now.requests;
        // A look is skipped when it cannot breach on errors: no new error
        // since the last look judged, and that look's window already had
        // `min_requests` (every window judged, the bake's whole and core's
        // open one, holds at least this 5 s window's requests). Then each
        // error test's evidence only fell since (a rate lower, a binomial
        // tail heavier): the same outcomes, a fraction of the work.
        let (mut errors_seen, mut requests_seen) = (now.errors, start);
        for look in 1..=LOOKS {
            while now.requests < start + n * look / LOOKS {
                w.request(&mut rng, &mut now);
            }
            let closing = look == LOOKS;
            if !closing && now.errors == errors_seen && requests_seen - start >= min_requests {
                continue;
            }
            (errors_seen, requests_seen) = (now.errors, now.requests);
            for r in replays.iter_mut().flatten() {
                r.look(&now, &baseline, closing, window);
            }
        }
        if replays.iter().flatten().all(|r| r.rollback.is_some()) {
            break;
        }
    }
    replays
        .into_iter()
        .map(|[a, b]| [a.rollback, b.rollback])
        .collect()
}

/// `t` with this window's noise.
fn jittered(rng: &mut Rng, t: &Traffic) -> Traffic {
    Traffic {
        latency: t.latency * (LATENCY_JITTER * rng.normal()).exp(),
        errors: t.errors * (ERROR_JITTER * rng.normal()).exp(),
        client: t.client * (CLIENT_JITTER * rng.normal()).exp(),
        ..*t
    }
}

/// Requests in one window of `per_window` on average.
fn traffic(rng: &mut Rng, per_window: u64) -> u64 {
    ((per_window as f64 * (TRAFFIC_JITTER * rng.normal()).exp()).round() as u64).max(1)
}

/// One judge, one way of looking, one traffic level: every release's
/// rollback (or none), by kind.
pub struct Outcomes {
    pub judge: &'static str,
    pub mid_window: bool,
    pub per_window: u64,
    pub by_kind: Vec<(Kind, Vec<Option<Rollback>>)>,
}

impl Outcomes {
    fn of(&self, kind: Kind) -> &[Option<Rollback>] {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn false_rollbacks(&self) -> usize {
        self.of(Kind::Good).iter().flatten().count()
    }

    pub fn caught(&self, kind: Kind) -> usize {
        self.of(kind).iter().flatten().count()
    }

    /// Rollbacks of the bad releases a window judge can see.
    fn detections(&self) -> Vec<&Rollback> {
        BAD.iter()
            .filter(|k| k.judged())
            .flat_map(|k| self.of(*k).iter().flatten())
            .collect()
    }

    fn judged_bad(&self) -> usize {
        BAD.iter()
            .filter(|k| k.judged())
            .map(|k| self.of(*k).len())
            .sum()
    }
}

pub struct Results {
    pub good: u64,
    pub bad_each: u64,
    pub cells: Vec<Outcomes>,
    pub secs: f64,
}

pub const LEVELS: [u64; 3] = [100, 1_000, 10_000];

/// Every release at every traffic level through every judge, on up to two
/// threads (each release has its own seed: the same results either way).
pub fn run(good: u64, bad_each: u64, levels: &[u64]) -> Results {
    let started = std::time::Instant::now();
    let named = judges();
    let mut jobs: Vec<(Kind, u64, u64)> = Vec::new();
    for &level in levels {
        jobs.extend((0..good).map(|i| (Kind::Good, i, level)));
        for kind in BAD {
            jobs.extend((0..bad_each).map(|i| (kind, i, level)));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    let mut done: Vec<(usize, Vec<[Option<Rollback>; 2]>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(kind, i, level)) = jobs.get(j) else {
                            return out;
                        };
                        out.push((j, release(kind, i, level, &named)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("simulation thread"))
            .collect()
    });
    done.sort_by_key(|d| d.0);
    let mut cells = Vec::new();
    for &level in levels {
        for (j, judge) in named.iter().enumerate() {
            for (m, mid_window) in [true, false].into_iter().enumerate() {
                let mut by_kind: Vec<(Kind, Vec<Option<Rollback>>)> = Vec::new();
                for (job, (_, outcome)) in jobs.iter().zip(&done) {
                    if job.2 != level {
                        continue;
                    }
                    let r = outcome[j][m].clone();
                    match by_kind.iter_mut().find(|(k, _)| *k == job.0) {
                        Some((_, v)) => v.push(r),
                        None => by_kind.push((job.0, vec![r])),
                    }
                }
                cells.push(Outcomes {
                    judge: judge.name,
                    mid_window,
                    per_window: level,
                    by_kind,
                });
            }
        }
    }
    Results {
        good,
        bad_each,
        cells,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn median(mut xs: Vec<u64>) -> Option<u64> {
    xs.sort_unstable();
    xs.get(xs.len().saturating_sub(1) / 2).copied()
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `12 (error_rate 10, p99 2)`: how many, and by which metric.
fn by_metric(rollbacks: &[&Rollback]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in rollbacks {
        match counts.iter_mut().find(|c| c.0 == r.metric) {
            Some(c) => c.1 += 1,
            None => counts.push((r.metric.clone(), 1)),
        }
    }
    if counts.is_empty() {
        return "0".into();
    }
    let short = |m: &str| {
        match m {
            "error_rate" => "5xx",
            "4xx_rate" => "4xx",
            "latency" => "rank",
            other => other,
        }
        .to_string()
    };
    let parts: Vec<String> = counts
        .iter()
        .map(|(m, n)| format!("{} {n}", short(m)))
        .collect();
    format!("{} ({})", rollbacks.len(), parts.join(", "))
}

fn check(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

/// The report's section.
pub fn render(o: &mut String, r: &Results) {
    let _ = writeln!(
        o,
        "\n## The bake judge's error rates (synthetic releases)\n"
    );
    let _ = writeln!(
        o,
        "{} good releases and {} of each bad kind replayed through the bake's own judge (`BakeWindows::observe` and `judge` from bluegreen-core; pure, in process, seeded; {:.1} s). Rerun alone: `BENCH_PARTS=judge target/release/bluegreen-bench --out /tmp/judge.md` (add `--quick` for the CI size).\n",
        r.good, r.bad_each, r.secs
    );
    let _ = writeln!(o, "- Service: latency log-normal (median 20 ms, sigma 0.5) with 2 % from a slow path (median 100 ms, sigma 0.7), 4xx answered in about 2 ms; 5xx 0.2 %, 4xx 3 % (a quarter of them 401). Every window: traffic × e^(0.1 N), latency × e^(0.05 N), 5xx rate × e^(0.3 N), 4xx rate × e^(0.15 N).");
    let _ = writeln!(o, "- Baseline: the old side's traffic before the switch, {BASELINE_WINDOWS} windows' worth, from another time of day: latency × U[0.9, 1.1], 5xx and 4xx rates × log-U[0.8, 1.25]. Good releases are the baseline's distributions without the drift.");
    let _ = writeln!(o, "- Bad releases: p99 +30 % with every latency × 1.3 (median +30 % too), p99 +30 % in the tail only (above the p90, median unchanged), 5xx +0.5 points (0.2 % → 0.7 %), 401 +25 points, CPU +40 % (a window holds no CPU: not judged by this judge, app resources are judged separately; its column counts rollbacks it got anyway, for other reasons).");
    let (now, consecutive) = shipped();
    let _ = writeln!(o, "- Bake: {BAKE_WINDOWS} windows (the default 60 s in 5 s windows), `consecutive = {consecutive}` (both judges). Looked at every 100 ms (50 looks a window, as the pipeline does: an error-rate breach acts at any look) or only at each window's end.");
    let _ = writeln!(o, "- {BEFORE}: the judge before \"Error rates judged with evidence\": at every look `errors / requests > max_error_rate` (0.01) over the open window once it has `min_requests` (20) — no statistics; emulated in the bench, core no longer has it — and at window ends core's `judge` with `p99_ratio 1.5` (bluegreen.toml), `max_4xx_increase 0.2`, no `max_p99`, no `error_rate_ratio`, no rank test.");
    let _ = writeln!(o, "- {NOW}: the thresholds `Config::parse` gives a config whose `[deploy.bake]` sets only `p99_ratio = 1.5`: `min_requests {}, max_error_rate {}, significance {}, error_rate_ratio {:?}, p99_ratio {:?}, max_4xx_increase {:?}, max_p99 {:?}`, rank test {}. Errors judged by `BakeWindows::observe` at every look: against `max_error_rate` over the open window and the whole bake, against the baseline's rate over the whole bake with the counts divided by the baseline's dispersion (its 6 windows' Pearson χ² / 5, at least 1: the quasi-binomial); the rest at window ends.",
        now.min_requests, now.max_error_rate, now.significance, now.error_rate_ratio, now.p99_ratio, now.max_4xx_increase, now.max_p99,
        now.latency_shift.map(|r| format!("`alpha {}, min_ratio {}, min_shift {} µs, min_samples {}`", r.alpha, r.min_ratio, r.min_shift, r.min_samples)).unwrap_or_else(|| "off".into()));
    let _ = writeln!(o, "- {VARIANT}: the shipped judge with the baseline's dispersion taken as 1 (its test against the baseline's rate a plain binomial), for what the correction does.");
    let _ = writeln!(o, "- Each count says which check rolled back: `5xx` (the error-rate check or tests), `4xx` (`max_4xx_increase`), `p99` (`p99_ratio`), `rank` (the rank test). Windows to detection: the 5 s windows begun when the rollback came (1 = within the first); requests: the bake's requests until then; both over the caught releases of the judged bad kinds.");
    for mid_window in [true, false] {
        let _ = writeln!(
            o,
            "\n### {}\n",
            if mid_window {
                "Looked at every 100 ms (as the pipeline does)"
            } else {
                "Looked at only at each window's end"
            }
        );
        let _ = writeln!(o, "| judge | requests/window | false rollbacks (of {}) | {} | caught (of {}) | {} | windows to detection: median / max | requests to detection: median / max | within 2 windows |", r.good, BAD.iter().filter(|k| k.judged()).map(|k| format!("{} (of {})", k.label(), r.bad_each)).collect::<Vec<_>>().join(" | "), r.bad_each * 4, Kind::Cpu.label());
        let _ = writeln!(
            o,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in r.cells.iter().filter(|c| c.mid_window == mid_window) {
            let good: Vec<&Rollback> = c.of(Kind::Good).iter().flatten().collect();
            let caught = c.detections();
            let windows: Vec<u64> = caught.iter().map(|d| d.window as u64).collect();
            let within = windows.iter().filter(|w| **w <= 2).count();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} ({:.0} %) | not judged ({} rolled back) | {} | {} | {} |",
                c.judge,
                thousands(c.per_window),
                by_metric(&good),
                BAD.iter()
                    .filter(|k| k.judged())
                    .map(|k| by_metric(&c.of(*k).iter().flatten().collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
                    .join(" | "),
                caught.len(),
                100.0 * caught.len() as f64 / c.judged_bad().max(1) as f64,
                c.caught(Kind::Cpu),
                match (median(windows.clone()), windows.iter().max()) {
                    (Some(m), Some(x)) => format!("{m} / {x}"),
                    _ => "-".into(),
                },
                match (
                    median(caught.iter().map(|d| d.requests).collect()),
                    caught.iter().map(|d| d.requests).max()
                ) {
                    (Some(m), Some(x)) => format!("{} / {}", thousands(m), thousands(x)),
                    _ => "-".into(),
                },
                if caught.is_empty() {
                    "-".into()
                } else {
                    format!("{within} of {}", caught.len())
                }
            );
        }
    }
    let _ = writeln!(o, "\n### Targets (issue 26)\n");
    for mid_window in [true, false] {
        let how = if mid_window {
            "every 100 ms"
        } else {
            "window ends only"
        };
        for Judge { name, .. } in judges() {
            let cells: Vec<&Outcomes> = r
                .cells
                .iter()
                .filter(|c| c.judge == name && c.mid_window == mid_window)
                .collect();
            let false_rb: Vec<String> = cells
                .iter()
                .map(|c| format!("{} at {}", c.false_rollbacks(), thousands(c.per_window)))
                .collect();
            let none = cells.iter().all(|c| c.false_rollbacks() == 0);
            let _ = writeln!(
                o,
                "- {name}, {how}: 0 false rollbacks in {} good releases at every traffic level: {} — {}",
                r.good,
                false_rb.join(", "),
                check(none)
            );
            if let Some(c) = cells.iter().find(|c| c.per_window == 1_000) {
                let share = c.detections().len() as f64 / c.judged_bad().max(1) as f64;
                let with_cpu = c.detections().len() as f64
                    / (c.judged_bad() + c.of(Kind::Cpu).len()).max(1) as f64;
                let windows: Vec<u64> = c.detections().iter().map(|d| d.window as u64).collect();
                let m = median(windows);
                let _ = writeln!(
                    o,
                    "  - ≥ 95 % of bad releases caught at 1,000 requests per window: {:.1} % of the judged kinds ({:.1} % counting the CPU kind as missed) — {}",
                    100.0 * share,
                    100.0 * with_cpu,
                    check(share >= 0.95)
                );
                let _ = writeln!(
                    o,
                    "  - detection within 2 windows (median, 1,000 requests per window): {} — {}",
                    m.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                    check(m.is_some_and(|m| m <= 2))
                );
            }
        }
    }
}

/// The part: every release, the section printed and returned.
pub fn part(quick: bool) -> String {
    let (good, bad) = if quick { (20, 5) } else { (200, 50) };
    eprintln!("== judge: {good} good and {bad} of each bad kind at {LEVELS:?} requests a window");
    let results = run(good, bad, &LEVELS);
    let mut o = String::new();
    render(&mut o, &results);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_seeded_and_roughly_normal() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let xs: Vec<f64> = (0..20_000).map(|_| a.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    /// A small seeded set at 1,000 requests a window, judged by `judge`:
    /// (looked at every 100 ms, at window ends).
    fn small(judge: &str) -> (Outcomes, Outcomes) {
        set(judge, 10, 3)
    }

    fn set(judge: &str, good: u64, bad_each: u64) -> (Outcomes, Outcomes) {
        let mut cells = run(good, bad_each, &[1_000])
            .cells
            .into_iter()
            .filter(|c| c.judge == judge);
        let every_look = cells.next().unwrap();
        let window_ends = cells.next().unwrap();
        assert!(every_look.mid_window && !window_ends.mid_window);
        (every_look, window_ends)
    }

    #[test]
    fn the_shipped_thresholds_come_from_the_config_defaults() {
        let (t, consecutive) = shipped();
        assert_eq!(consecutive, 2);
        assert_eq!((t.min_requests, t.max_error_rate), (20, 0.01));
        assert_eq!(t.significance, 0.001);
        assert_eq!(t.error_rate_ratio, Some(2.0));
        assert_eq!((t.p99_ratio, t.max_4xx_increase), (Some(1.5), Some(0.2)));
        let rule = t.latency_shift.expect("the rank test is on by default");
        assert_eq!(
            (rule.alpha, rule.min_ratio, rule.min_shift),
            (0.001, 1.25, 2_000.0)
        );
    }

    #[test]
    fn the_point_rule_is_the_old_bare_rate() {
        let window = |requests, errors| Window {
            requests,
            errors,
            ..Window::default()
        };
        let (_, rule, _) = before();
        assert!(!rule.breached(&window(19, 5)), "below min_requests");
        assert!(rule.breached(&window(20, 1)), "one 5xx in 20 is 5 %");
        assert!(!rule.breached(&window(1_000, 10)), "1 % is not above 1 %");
        assert!(rule.breached(&window(1_000, 11)));
    }

    /// The old judge's false rollbacks were the point check's (one early
    /// 5xx); at window ends, in this small set, no judge rolled back a
    /// good release; every judge catches a 401 surge, and the shipped one
    /// (its rank test) a release slower all over.
    #[test]
    fn the_clear_cases_are_caught() {
        let (every_look, window_ends) = small(BEFORE);
        for r in every_look.of(Kind::Good).iter().flatten() {
            assert_eq!(r.metric, "error_rate", "{r:?}");
        }
        let now = small(NOW);
        for c in [&every_look, &window_ends, &now.0, &now.1] {
            assert_eq!(c.caught(Kind::Surge401), c.of(Kind::Surge401).len());
        }
        for c in [&window_ends, &now.1] {
            assert_eq!(c.false_rollbacks(), 0);
        }
        for c in [&now.0, &now.1] {
            assert_eq!(c.caught(Kind::SlowAll), c.of(Kind::SlowAll).len());
        }
    }

    /// Issue 26's targets for the shipped judge at 1,000 requests a
    /// window, looked at every 100 ms as the pipeline does, over the
    /// benchmark's whole set (200 good releases, 50 of each bad kind): no
    /// good release rolled back, every +0.5-point 5xx release caught.
    /// Not met (BENCHMARKS.md, bench/NOTES.md): 12 of 200 good releases are
    /// rolled back (8 by `p99_ratio = 1.5`, a p99 of 1,000 requests being
    /// its 10 slowest; 4 by the test against the baseline's rate), and 42
    /// of 50 +0.5-point releases are caught.
    #[test]
    #[ignore = "not met by the shipped judge: 12 of 200 false rollbacks, 42 of 50 caught (see BENCHMARKS.md)"]
    fn issue_26_targets_at_1000_requests_a_window() {
        let (every_look, _) = set(NOW, 200, 50);
        assert_eq!(every_look.false_rollbacks(), 0);
        assert_eq!(
            every_look.caught(Kind::Errors),
            every_look.of(Kind::Errors).len()
        );
    }

    #[test]
    fn the_tail_slowdown_moves_the_p99_by_thirty_percent_and_not_the_median() {
        let tail = Tail::new();
        let p99 = quantile(0.99);
        let moved = tail.t * (p99 / tail.t).powf(tail.gamma);
        assert!((moved / p99 - 1.3).abs() < 1e-6);
        assert!(quantile(0.5) < tail.t);
    }
}
