//! Scaling with two workers: each proxy again with two (bluegreen
//! `workers = 2`, nginx `worker_processes 2`, HAProxy `nbthread 2`, Caddy
//! `GOMAXPROCS=2`), allowed on two cores, against its one-worker run pinned
//! to one core. The load stays where it was, so on a 2-core machine the
//! second worker shares a core with wrk and the upstream: the table shows
//! what a second worker gains and costs per request here, not N-core
//! scaling (the notes say what that would need).

use crate::procs::{Env, Kind, Proxy};
use crate::report::Row;
use crate::{median_wrk, wrk, Plan};
use anyhow::Result;
use std::fmt::Write;

/// One proxy with two workers at the main run's concurrency.
#[derive(Debug, Clone)]
pub struct Scaled {
    pub name: &'static str,
    pub rps: f64,
    pub p99_us: u64,
    /// The proxy's CPU per request (user + kernel, µs).
    pub cpu_us: f64,
    /// CPU seconds per second of load (2.0 = both cores busy).
    pub cores_used: f64,
    pub errors: u64,
}

pub fn part(
    env: &Env,
    plan: &Plan,
    cores: usize,
    only: Option<&str>,
    blue: u16,
    green: u16,
) -> Result<Vec<Scaled>> {
    if cores < 2 {
        eprintln!("scaling: one core, skipped");
        return Ok(Vec::new());
    }
    let two = Env {
        workers: 2,
        proxy_cpus: "0-1".into(),
        ..env.clone()
    };
    let mut out = Vec::new();
    for kind in [Kind::Bluegreen, Kind::Nginx, Kind::Haproxy, Kind::Caddy] {
        if only.is_some_and(|o| o != kind.name()) {
            continue;
        }
        eprintln!("== {} with two workers", kind.name());
        let proxy = Proxy::start(kind, &two, blue, green)?;
        wrk(&two, &proxy, "/", 1, plan.conns)?; // warm-up
        let (u0, s0) = proxy.cpu_ticks_split();
        let run = median_wrk(&two, &proxy, "/", plan)?;
        let (u1, s1) = proxy.cpu_ticks_split();
        // Ticks are 1/100 s, over every repeat of the run.
        let secs = plan.wrk_secs as f64 * plan.repeats.max(1) as f64;
        let cores_used = (u1 + s1 - u0 - s0) as f64 / 100.0 / secs;
        out.push(Scaled {
            name: kind.name(),
            rps: run.rps,
            p99_us: run.p99_us,
            cpu_us: if run.rps > 0.0 {
                cores_used * 1e6 / run.rps
            } else {
                0.0
            },
            cores_used,
            errors: run.errors + run.connect_errors,
        });
    }
    Ok(out)
}

pub fn render(o: &mut String, rows: &[Row], scaled: &[Scaled], conns: usize) {
    if scaled.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## Scaling with two workers ({conns} connections, small responses)\n"
    );
    let _ = writeln!(o, "One worker: pinned to CPU 0 (the tables above). Two workers: allowed on CPUs 0 and 1, where wrk and the upstream also run, so a gain in req/s is bounded by what the load core gives up; CPU per request shows what spreading over threads costs. bluegreen's one worker is a current-thread runtime, its two a work-stealing one, so its ratio includes the change of scheduler.\n");
    let _ = writeln!(
        o,
        "| proxy | 1 worker req/s | 2 workers req/s | × | 1 worker CPU µs/req | 2 workers CPU µs/req | cores used | 2 workers p99 ms | errors |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in scaled {
        let one = rows.iter().find(|r| r.name == s.name);
        let rps1 = one.and_then(|r| r.small.as_ref()).map(|w| w.rps);
        let cpu1 = one.and_then(|r| r.cpu_us).map(|(u, k)| u + k);
        let f = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {} | {} | {:.1} | {:.2} | {:.2} | {} |",
            s.name,
            f(rps1, 0),
            s.rps,
            f(rps1.map(|r| s.rps / r.max(1.0)), 2),
            f(cpu1, 1),
            s.cpu_us,
            s.cores_used,
            s.p99_us as f64 / 1000.0,
            s.errors
        );
    }
}
