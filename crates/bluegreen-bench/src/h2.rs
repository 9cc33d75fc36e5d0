//! HTTP/2 on the client side, h2c (prior knowledge) and over TLS, with
//! h2load: requests per proxy CPU-second and latency percentiles (from
//! h2load's per-request log), the proxy pinned to one core like every part.

use crate::procs::{Env, Proxy};
use crate::report::Row;
use anyhow::{bail, Context, Result};
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

/// Connections and streams per connection (the issue's `-c 16 -m 16`).
const CONNS: usize = 16;
const STREAMS: usize = 16;

/// One h2load run.
#[derive(Debug, Clone, Default)]
pub struct H2Run {
    pub rps: f64,
    pub failed: u64,
    /// Proxy CPU seconds during the run.
    pub cpu: f64,
    pub secs: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl H2Run {
    pub fn per_cpu(&self) -> f64 {
        crate::tls::per_cpu(self.rps, self.secs, self.cpu)
    }
}

/// h2c and TLS runs for one proxy.
#[derive(Debug, Clone, Default)]
pub struct H2 {
    pub h2c: Option<H2Run>,
    pub tls: Option<H2Run>,
}

pub fn measure(env: &Env, proxy: &Proxy, secs: u64) -> H2 {
    let h2c = format!("http://127.0.0.1:{}/", proxy.h2c_port);
    let tls = format!("https://127.0.0.1:{}/", proxy.tls_port);
    let mut out = H2::default();
    for (url, slot) in [(h2c, &mut out.h2c), (tls, &mut out.tls)] {
        let _ = run(env, proxy, &url, 1); // warm-up
        match run(env, proxy, &url, secs) {
            Ok(r) => *slot = Some(r),
            Err(e) => eprintln!("h2load {url}: {e:#}"),
        }
    }
    out
}

fn run(env: &Env, proxy: &Proxy, url: &str, secs: u64) -> Result<H2Run> {
    let log = env.dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let (u0, s0) = proxy.cpu_ticks_split();
    let (rps, failed) = h2load(env, url, secs, CONNS, STREAMS, Some(&log))?;
    let (u1, s1) = proxy.cpu_ticks_split();
    // Tab-separated: start (µs since the epoch), status, µs to the end of the response.
    let mut lat: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(H2Run {
        rps,
        failed,
        cpu: (u1 + s1 - u0 - s0) as f64 / 100.0,
        secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

/// h2load on the load cores for `secs`, `conns` connections with `streams`
/// each, its per-request log to `log`: (req/s, failed requests).
pub fn h2load(
    env: &Env,
    url: &str,
    secs: u64,
    conns: usize,
    streams: usize,
    log: Option<&Path>,
) -> Result<(f64, u64)> {
    let mut args: Vec<String> = vec![
        "h2load".into(),
        "-c".into(),
        conns.to_string(),
        "-m".into(),
        streams.to_string(),
        "-D".into(),
        secs.to_string(),
    ];
    if let Some(log) = log {
        args.push(format!("--log-file={}", log.display()));
    }
    args.push(url.into());
    if !env.load_cpus.is_empty() {
        args.splice(
            0..0,
            ["taskset".to_string(), "-c".into(), env.load_cpus.clone()],
        );
    }
    let out = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .context("running h2load (bench/run installs nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse::<f64>().ok())
        .with_context(|| format!("h2load printed no rate: {text}"))?;
    // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" failed")))
        .and_then(|p| p.trim_end_matches(" failed").parse().ok())
        .unwrap_or(0);
    Ok((rps, failed))
}

/// The HTTP/2 table and its target.
pub fn render(o: &mut String, rows: &[Row]) {
    let measured: Vec<(&str, &H2)> = rows
        .iter()
        .filter_map(|r| Some((r.name, r.h2.as_ref()?)))
        .collect();
    if measured.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## HTTP/2 on the client side (h2load -c {CONNS} -m {STREAMS}; HTTP/1.1 to the upstream)\n"
    );
    let _ = writeln!(
        o,
        "| proxy | h2c req/s | h2c req per CPU-s | h2c p50 ms | h2c p99 ms | TLS req/s | TLS req per CPU-s | TLS p50 ms | TLS p99 ms | failed |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cell = |r: &Option<H2Run>| match r {
        Some(r) => format!(
            "{:.0} | {:.0} | {:.2} | {:.2}",
            r.rps,
            r.per_cpu(),
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0
        ),
        None => "- | - | - | -".into(),
    };
    for (name, m) in &measured {
        let failed =
            m.h2c.as_ref().map_or(0, |r| r.failed) + m.tls.as_ref().map_or(0, |r| r.failed);
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {failed} |",
            cell(&m.h2c),
            cell(&m.tls)
        );
    }
    let get = |n: &str| measured.iter().find(|(x, _)| *x == n).map(|(_, m)| *m);
    let Some(bg) = get("bluegreen") else { return };
    for (label, pick) in [
        ("h2c", (|m: &H2| m.h2c.clone()) as fn(&H2) -> Option<H2Run>),
        ("HTTP/2 over TLS", |m: &H2| m.tls.clone()),
    ] {
        let Some(mine) = pick(bg) else { continue };
        let best = ["nginx", "haproxy", "caddy"]
            .iter()
            .filter_map(|n| get(n).and_then(pick).map(|r| (n, r.per_cpu(), r.p99_us)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((peer, per_cpu, p99)) = best {
            let ratio = mine.per_cpu() / per_cpu.max(1.0);
            let _ = writeln!(
                o,
                "- {label}: requests per CPU-second ≥ 1.1 × the better peer ({peer}, {per_cpu:.0}): {ratio:.2}× — {}; p99 {:.2} ms against its {:.2} ms",
                if ratio >= 1.1 { "met" } else { "**not met**" },
                mine.p99_us as f64 / 1000.0,
                p99 as f64 / 1000.0
            );
        }
    }
}
