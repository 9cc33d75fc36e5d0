//! `bluegreen-bench`: bluegreen side by side with nginx, HAProxy and Caddy, in one
//! run on one machine, reported as ratios.
//!
//! What it measures, and why: users pick a router they trust to be fast, and
//! a blue-green router must also switch without errors. So: throughput and
//! latency at a fixed concurrency (wrk) for small and 64 KiB responses,
//! latency at a fixed rate below saturation, errors and wrong-side answers
//! while switching every 100 ms, resident memory idle and with many open
//! keep-alive connections, and WebSockets that survive a switch. Every proxy
//! runs pinned to the same core(s) with one worker; the load generators and
//! the upstream run on the other core(s).
#![forbid(unsafe_code)]

mod cluster;
mod drivers;
mod h2;
mod judge;
mod load;
mod procs;
mod report;
mod restarts;
mod scaling;
mod tls;

use anyhow::{bail, Context, Result};
use clap::Parser;
use load::Answer;
use procs::{Env, Kind, Proxy, Upstream};
use report::{Report, Row};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmark bluegreen against nginx and HAProxy")]
struct Args {
    /// Run every part for a second or two (CI: checks the harness, not numbers).
    #[arg(long)]
    quick: bool,
    /// Where to write the report (Markdown).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// The bluegreen binary under test.
    #[arg(long, default_value = "target/release/bluegreen")]
    bluegreen: PathBuf,
    /// Directory with the proxy configs.
    #[arg(long, default_value = "bench/conf")]
    conf: PathBuf,
}

/// Durations and sizes of one run.
pub struct Plan {
    /// wrk runs per measurement; the median by req/s is reported.
    pub repeats: usize,
    pub wrk_secs: u64,
    pub conns: usize,
    pub rate: u64,
    pub rate_secs: u64,
    pub idle_conns: usize,
    pub switch_secs: u64,
    pub websockets: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The judge's error rates: pure, in process, no proxies to start.
    if std::env::var("BENCH_PARTS").is_ok_and(|p| p == "judge") {
        let text = judge::part(args.quick);
        std::fs::write(&args.out, &text)?;
        println!("{text}");
        return Ok(());
    }
    let mut plan = if args.quick {
        Plan {
            repeats: 1,
            wrk_secs: 1,
            conns: 32,
            rate: 1000,
            rate_secs: 1,
            idle_conns: 500,
            switch_secs: 2,
            websockets: 50,
        }
    } else {
        Plan {
            repeats: 3,
            wrk_secs: 10,
            conns: 64,
            rate: 5000,
            rate_secs: 10,
            idle_conns: 10_000,
            switch_secs: 10,
            websockets: 1000,
        }
    };

    if let Some(n) = std::env::var("BENCH_IDLE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        plan.idle_conns = n;
    }

    // 1. Limits and placement: many sockets; proxies on one core, load elsewhere.
    raise_fd_limit()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (proxy_cpus, load_cpus) = if cores >= 2 {
        let rest = if cores == 2 {
            "1".to_string()
        } else {
            format!("1-{}", cores - 1)
        };
        ("0".to_string(), rest)
    } else {
        (String::new(), String::new())
    };
    let dir = std::env::temp_dir().join(format!("bluegreen-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        dir: dir.clone(),
        conf: std::fs::canonicalize(&args.conf).context("bench/conf")?,
        bluegreen: std::fs::canonicalize(&args.bluegreen)
            .context("the bluegreen binary (bench/run builds it)")?,
        proxy_cpus: proxy_cpus.clone(),
        load_cpus: load_cpus.clone(),
        workers: 1,
    };
    if !load_cpus.is_empty() {
        // This process is the load generator: keep it off the proxy's core.
        let ok = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &load_cpus,
                &std::process::id().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("taskset could not pin the load generator");
        }
    }

    // 2. The one upstream every proxy forwards to, and the one certificate
    //    every proxy serves over HTTPS.
    tls::certificate(&env)?;
    let upstream = Upstream::start(&env)?;
    let mut report = Report::new(
        &args.quick,
        cores,
        &proxy_cpus,
        &load_cpus,
        plan.conns,
        plan.rate,
        plan.idle_conns,
    );

    // 3. Each proxy in turn, the same parts in the same order.
    let only = std::env::var("BENCH_ONLY").ok();
    for kind in [
        Kind::Direct,
        Kind::Bluegreen,
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Caddy,
    ] {
        if only.as_deref().is_some_and(|o| o != kind.name())
            || std::env::var("BENCH_PARTS").is_ok_and(|p| {
                ["tls", "restarts", "cluster", "workers", "drivers"].contains(&p.as_str())
            })
        {
            continue;
        }
        eprintln!("== {}", kind.name());
        let mut proxy = Proxy::start(kind, &env, upstream.blue, upstream.green)?;
        let mut row = Row::new(kind.name());
        if std::env::var("BENCH_PARTS").is_ok_and(|p| p == "rates") {
            if kind != Kind::Direct {
                row.at_rates = cpu_at_rates(&proxy, &plan);
            }
            report.rows.push(row);
            continue;
        }
        if std::env::var("BENCH_PARTS").is_ok_and(|p| p == "fixed") {
            row.fixed = Some(fixed_rate(&proxy, &plan));
            row.shadowed = shadowed(&proxy, &plan)?;
            report.rows.push(row);
            continue;
        }
        if std::env::var("BENCH_PARTS").is_ok_and(|p| p == "switching") {
            if kind != Kind::Direct {
                row.switching = Some(switching(
                    &mut proxy,
                    Duration::from_secs(plan.switch_secs),
                )?);
            }
            report.rows.push(row);
            continue;
        }
        if std::env::var("BENCH_PARTS").is_ok_and(|p| p == "h2") {
            if kind != Kind::Direct {
                row.h2 = Some(h2::measure(&env, &proxy, plan.wrk_secs));
            }
            report.rows.push(row);
            continue;
        }
        if std::env::var("BENCH_PARTS").is_ok_and(|p| p == "memory") {
            row.rss_idle_kib = proxy.rss_kib();
            row.rss_conns = Some(idle_memory(&proxy, plan.idle_conns)?);
            report.rows.push(row);
            continue;
        }
        wrk(&env, &proxy, "/", 1, plan.conns)?; // warm-up
        row.rss_idle_kib = proxy.rss_kib();
        let (user0, sys0) = proxy.cpu_ticks_split();
        let small = median_wrk(&env, &proxy, "/", &plan)?;
        let (user1, sys1) = proxy.cpu_ticks_split();
        // Ticks are 1/100 s: CPU seconds per second of load, then per request.
        let secs = plan.wrk_secs as f64 * plan.repeats as f64;
        let share = |ticks: u64| ticks as f64 / 100.0 / secs;
        row.cpu_pct = share(user1 + sys1 - user0 - sys0) * 100.0;
        // `direct` has no proxy to charge.
        if small.rps > 0.0 && kind != Kind::Direct {
            row.cpu_us = Some((
                share(user1 - user0) * 1e6 / small.rps,
                share(sys1 - sys0) * 1e6 / small.rps,
            ));
        }
        row.small = Some(small);
        let (user0, sys0) = proxy.cpu_ticks_split();
        let large = median_wrk(&env, &proxy, "/64k", &plan)?;
        let (user1, sys1) = proxy.cpu_ticks_split();
        if large.rps > 0.0 && kind != Kind::Direct {
            row.cpu_us_large = Some((
                share(user1 - user0) * 1e6 / large.rps,
                share(sys1 - sys0) * 1e6 / large.rps,
            ));
        }
        row.large = Some(large);
        row.fixed = Some(fixed_rate(&proxy, &plan));
        row.shadowed = shadowed(&proxy, &plan)?;
        if kind != Kind::Direct {
            row.at_rates = cpu_at_rates(&proxy, &plan);
        }
        if kind != Kind::Direct {
            row.h2 = Some(h2::measure(&env, &proxy, plan.wrk_secs));
        }
        row.rss_conns = Some(idle_memory(&proxy, plan.idle_conns)?);
        if kind != Kind::Direct {
            row.switching = Some(switching(
                &mut proxy,
                Duration::from_secs(plan.switch_secs),
            )?);
        }
        drop(proxy);
        report.rows.push(row);
    }
    // Two workers per proxy, against the one-worker runs above.
    if std::env::var("BENCH_PARTS").is_err()
        || std::env::var("BENCH_PARTS").is_ok_and(|p| p == "workers")
    {
        report.scaled = scaling::part(
            &env,
            &plan,
            cores,
            only.as_deref(),
            upstream.blue,
            upstream.green,
        )?;
    }
    // HTTPS: keep-alive, full handshakes, HTTP/2.
    if std::env::var("BENCH_PARTS").is_err()
        || std::env::var("BENCH_PARTS").is_ok_and(|p| p == "tls")
    {
        for kind in [Kind::Bluegreen, Kind::Nginx, Kind::Haproxy, Kind::Caddy] {
            if only.as_deref().is_some_and(|o| o != kind.name()) {
                continue;
            }
            eprintln!("== {} over TLS", kind.name());
            let proxy = Proxy::start(kind, &env, upstream.blue, upstream.green)?;
            let measured = tls::measure(&env, &proxy, plan.wrk_secs, plan.conns)?;
            match report.rows.iter_mut().find(|r| r.name == kind.name()) {
                Some(row) => row.tls = Some(measured),
                None => {
                    let mut row = Row::new(kind.name());
                    row.tls = Some(measured);
                    report.rows.push(row);
                }
            }
        }
    }
    // Restarts under load: bluegreen upgrade, nginx binary upgrade and
    // reload, HAProxy reload with socket transfer.
    if std::env::var("BENCH_PARTS").is_err()
        || std::env::var("BENCH_PARTS").is_ok_and(|p| p == "restarts")
    {
        report.restarts = restarts::part(&env, &plan, upstream.blue, upstream.green)?;
    }
    // Switching through each driver: builtin, nginx, HAProxy.
    if std::env::var("BENCH_PARTS").is_err()
        || std::env::var("BENCH_PARTS").is_ok_and(|p| p == "drivers")
    {
        report.drivers = drivers::part(&env, args.quick, upstream.blue, upstream.green)?;
    }
    // Several nodes on etcd: switch convergence under load.
    if std::env::var("BENCH_PARTS").is_err()
        || std::env::var("BENCH_PARTS").is_ok_and(|p| p == "cluster")
    {
        report.cluster = cluster::part(&env, args.quick, upstream.blue, upstream.green)?;
    }
    drop(upstream);

    // 4. WebSockets across a switch, with WebSocket-capable upstreams.
    if std::env::var("BENCH_PARTS").is_err() {
        websocket_part(&env, plan.websockets, &mut report)?;
    }

    // 5. The bake judge on synthetic releases (pure, in process).
    if std::env::var("BENCH_PARTS").is_err() {
        report.judge = Some(judge::part(args.quick));
    }

    // 6. The report.
    let text = report.render(&args, &env);
    std::fs::write(&args.out, &text)?;
    println!("{text}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn raise_fd_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = 200_000u64;
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

/// Result of one wrk run.
#[derive(Debug, Clone, Default)]
pub struct Wrk {
    pub rps: f64,
    /// Requests completed.
    pub requests: u64,
    /// Connections refused or failed to open.
    pub connect_errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub command: String,
}

fn wrk(env: &Env, proxy: &Proxy, path: &str, secs: u64, conns: usize) -> Result<Wrk> {
    let url = format!("http://127.0.0.1:{}{path}", proxy.port);
    wrk_url(env, &url, secs, conns, &[])
}

/// wrk against any URL (`https://` too), with extra arguments (`-H …`).
pub fn wrk_url(env: &Env, url: &str, secs: u64, conns: usize, extra: &[&str]) -> Result<Wrk> {
    let script = env.conf.join("../percentiles.lua");
    let mut cmd = Command::new("taskset");
    let mut args = vec![
        "-c".to_string(),
        env.load_cpus.clone(),
        "wrk".into(),
        "-t1".into(),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--timeout".into(),
        "5s".into(),
        "-s".into(),
        script.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(url.to_string());
    let args: Vec<String> = if env.load_cpus.is_empty() {
        args[2..].to_vec()
    } else {
        args
    };
    if env.load_cpus.is_empty() {
        cmd = Command::new("wrk");
    }
    let out = cmd
        .args(&args)
        .output()
        .context("running wrk (bench/run installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("BENCH "))
        .context("wrk script printed no BENCH line")?;
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let errors = ["non2xx", "connect", "read", "write", "timeout"]
        .iter()
        .map(|k| field(k))
        .sum();
    Ok(Wrk {
        rps,
        requests: field("requests"),
        connect_errors: field("connect"),
        p50_us: field("p50"),
        p99_us: field("p99"),
        p999_us: field("p999"),
        errors,
        command: format!(
            "wrk {}",
            args.iter()
                .skip(if env.load_cpus.is_empty() { 0 } else { 3 })
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        ),
    })
}

/// Latency percentiles (µs: p50, p99, p99.9) and errors at the plan's fixed rate.
fn fixed_rate(proxy: &Proxy, plan: &Plan) -> (u64, u64, u64, u64) {
    let (h, errors) = load::fixed_rate(
        proxy.addr(),
        plan.rate,
        32,
        Duration::from_secs(plan.rate_secs),
    );
    (
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        errors,
    )
}

/// The proxy's CPU per request at 1,000 and 4,000 req/s over 16
/// keep-alive connections: below saturation, where wake-ups, timers and
/// cold caches weigh more than at full load.
fn cpu_at_rates(proxy: &Proxy, plan: &Plan) -> Vec<report::AtRate> {
    [1_000u64, 4_000]
        .into_iter()
        .map(|rate| {
            let (u0, s0) = proxy.cpu_ticks_split();
            let (h, errors) =
                load::fixed_rate(proxy.addr(), rate, 16, Duration::from_secs(plan.rate_secs));
            let (u1, s1) = proxy.cpu_ticks_split();
            let requests = h.len();
            // Ticks are 1/100 s.
            let per = |t: u64| t as f64 * 10_000.0 / requests.max(1) as f64;
            report::AtRate {
                rate,
                requests,
                user_us: per(u1 - u0),
                sys_us: per(s1 - s0),
                errors,
            }
        })
        .collect()
}

/// For bluegreen: the fixed-rate run again with every request mirrored to
/// the idle side, and how many copies were sent and dropped.
fn shadowed(proxy: &Proxy, plan: &Plan) -> Result<Option<report::Shadowed>> {
    if proxy.kind != Kind::Bluegreen {
        return Ok(None);
    }
    proxy.bluegreen_call("POST", "/api/v1/shadow/start", "{\"percent\": 100}")?;
    let latency = fixed_rate(proxy, plan);
    let stopped = proxy.bluegreen_call("POST", "/api/v1/shadow/stop", "")?;
    let v: serde_json::Value = serde_json::from_str(&stopped)?;
    let n = |k: &str| v["shadow"][k].as_u64().unwrap_or(0);
    Ok(Some((latency, n("mirrored"), n("dropped"))))
}

/// The median run (by req/s) of `plan.repeats` wrk runs.
fn median_wrk(env: &Env, proxy: &Proxy, path: &str, plan: &Plan) -> Result<Wrk> {
    let mut runs = (0..plan.repeats.max(1))
        .map(|_| wrk(env, proxy, path, plan.wrk_secs, plan.conns))
        .collect::<Result<Vec<_>>>()?;
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    Ok(runs.swap_remove(runs.len() / 2))
}

/// Resident memory with `n` idle keep-alive connections open (KiB, opened).
fn idle_memory(proxy: &Proxy, n: usize) -> Result<(u64, usize)> {
    let (ready, release, handle) = load::hold_idle(proxy.addr(), n);
    let opened = ready
        .recv_timeout(Duration::from_secs(120))
        .context("opening idle connections")?;
    // Idle, not just opened: proxies give an idle connection's buffers back
    // after a while (bluegreen: parked within a second, the freed memory
    // returned once the burst settled). The lowest reading over 8 s of
    // idleness, the same for every proxy.
    let mut rss = proxy.rss_kib();
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        rss = rss.min(proxy.rss_kib());
    }
    let _ = release.send(());
    let _ = handle.join();
    Ok((rss, opened))
}

/// Switching outcome.
#[derive(Debug, Clone, Default)]
pub struct Switching {
    pub switches: usize,
    pub requests: usize,
    pub errors: usize,
    pub non2xx: usize,
    pub wrong_side: usize,
}

/// Load for `duration` while switching every 100 ms.
fn switching(proxy: &mut Proxy, duration: Duration) -> Result<Switching> {
    let until = Instant::now() + duration;
    let load = load::closed_loop(proxy.addr(), 32, until);
    let mut marks: Vec<(Instant, Instant, bool)> = Vec::new();
    std::thread::sleep(Duration::from_millis(100));
    while Instant::now() + Duration::from_millis(100) < until {
        let called = Instant::now();
        proxy.switch()?;
        marks.push((called, Instant::now(), proxy.live_is_blue));
        std::thread::sleep(Duration::from_millis(100).saturating_sub(called.elapsed()));
    }
    let samples = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    let mut s = Switching {
        switches: marks.len(),
        requests: samples.len(),
        ..Switching::default()
    };
    for sample in &samples {
        match sample.answer {
            Answer::Error => s.errors += 1,
            Answer::Status(_) => s.non2xx += 1,
            a => {
                if !right_side(&marks, sample.start, sample.end, a == Answer::Blue) {
                    s.wrong_side += 1;
                    if std::env::var_os("BENCH_DEBUG").is_some() {
                        let k = marks.iter().rposition(|m| m.0 <= sample.start);
                        eprintln!("wrong side: {a:?} after mark {k:?}");
                    }
                }
            }
        }
    }
    // Leave the proxy where it started.
    if !proxy.live_is_blue {
        proxy.switch()?;
    }
    Ok(s)
}

/// Whether an answer from blue (or green) is right for a request that ran
/// from `start` to `end`. It must come from the side made live by the last
/// switch that returned before the request started, or from a side a later
/// switch made live while the request was still running (the proxy may have
/// read it after that switch); a request that started while a switch was in
/// progress may get either side.
pub(crate) fn right_side(
    marks: &[(Instant, Instant, bool)],
    start: Instant,
    end: Instant,
    blue: bool,
) -> bool {
    let k = match marks.iter().rposition(|m| m.0 <= start) {
        None => None,
        Some(k) if start > marks[k].1 => Some(k),
        Some(_) => return true,
    };
    let current = k.map(|k| marks[k].2).unwrap_or(true);
    let later = marks[k.map(|k| k + 1).unwrap_or(0)..]
        .iter()
        .take_while(|m| m.0 < end);
    current == blue || later.map(|m| m.2).any(|b| b == blue)
}

/// WebSocket upstreams (the bluegreen demo app) and a switch under open sockets.
fn websocket_part(env: &Env, n: usize, report: &mut Report) -> Result<()> {
    let mut apps = Vec::new();
    let mut ports = Vec::new();
    for side in ["blue", "green"] {
        let port = procs::free_port()?;
        let child = Command::new(&env.bluegreen)
            .args([
                "app",
                "--name",
                side,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        procs::wait_listening(port, "websocket upstream")?;
        apps.push(child);
        ports.push(port);
    }
    for kind in [Kind::Bluegreen, Kind::Nginx, Kind::Haproxy, Kind::Caddy] {
        let mut proxy = Proxy::start(kind, env, ports[0], ports[1])?;
        let (ready, go, handle) = load::websockets(proxy.addr(), n);
        let opened = ready
            .recv_timeout(Duration::from_secs(120))
            .context("opening websockets")?;
        proxy.switch()?;
        std::thread::sleep(Duration::from_millis(300)); // nginx reloads asynchronously: give it its chance
        let _ = go.send(());
        let alive = handle
            .join()
            .map_err(|_| anyhow::anyhow!("websocket thread panicked"))?;
        if let Some(row) = report.rows.iter_mut().find(|r| r.name == kind.name()) {
            row.websockets = Some((alive, opened));
        }
    }
    for mut a in apps {
        let _ = a.kill();
        let _ = a.wait();
    }
    Ok(())
}
