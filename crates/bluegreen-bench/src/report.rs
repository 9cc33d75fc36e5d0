//! The report: one table per part, ratios from the same run, the targets,
//! and how to rerun it. Written to BENCHMARKS.md.

use crate::procs::Env;
use crate::{Args, Switching, Wrk};
use std::fmt::Write;
use std::process::Command;

/// p50, p99, p99.9 in µs, and errors, at a fixed rate.
pub type Fixed = (u64, u64, u64, u64);

/// Fixed-rate latency with shadowing on, copies mirrored, copies dropped.
pub type Shadowed = (Fixed, u64, u64);

/// The proxy's CPU at a fixed request rate below saturation.
#[derive(Debug, Clone, Copy)]
pub struct AtRate {
    pub rate: u64,
    /// Requests answered in the run.
    pub requests: u64,
    /// Per request, µs: user space and kernel.
    pub user_us: f64,
    pub sys_us: f64,
    pub errors: u64,
}

/// Everything measured for one proxy.
pub struct Row {
    pub name: &'static str,
    pub rss_idle_kib: u64,
    pub cpu_pct: f64,
    /// The proxy's CPU per request at fixed concurrency: user, kernel (µs).
    pub cpu_us: Option<(f64, f64)>,
    pub small: Option<Wrk>,
    pub large: Option<Wrk>,
    /// p50, p99, p99.9 in µs, errors.
    pub fixed: Option<(u64, u64, u64, u64)>,
    /// The same fixed rate with every request shadowed: latency, mirrored, dropped.
    pub shadowed: Option<Shadowed>,
    /// RSS KiB with idle connections, connections opened.
    pub rss_conns: Option<(u64, usize)>,
    pub switching: Option<Switching>,
    /// Alive after the switch, opened.
    pub websockets: Option<(usize, usize)>,
    /// HTTPS: keep-alive, handshakes, HTTP/2.
    pub tls: Option<crate::tls::Measured>,
    /// The proxy's CPU per 64 KiB request: user, kernel (µs).
    pub cpu_us_large: Option<(f64, f64)>,
    /// HTTP/2 clients: h2c and over TLS.
    pub h2: Option<crate::h2::H2>,
    /// CPU per request at fixed rates below saturation.
    pub at_rates: Vec<AtRate>,
}

impl Row {
    pub fn new(name: &'static str) -> Row {
        Row {
            name,
            rss_idle_kib: 0,
            cpu_pct: 0.0,
            cpu_us: None,
            small: None,
            large: None,
            fixed: None,
            shadowed: None,
            rss_conns: None,
            switching: None,
            websockets: None,
            tls: None,
            cpu_us_large: None,
            h2: None,
            at_rates: Vec::new(),
        }
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    /// Restarts under load, one row per proxy and method.
    pub restarts: Vec<crate::restarts::Restarts>,
    /// Switching through each driver.
    pub drivers: Vec<crate::drivers::DriverRun>,
    /// Several nodes on etcd, one row per cluster size.
    pub cluster: Vec<crate::cluster::Convergence>,
    /// Each proxy with two workers.
    pub scaled: Vec<crate::scaling::Scaled>,
    /// The bake judge's error rates on synthetic releases (a rendered section).
    pub judge: Option<String>,
    quick: bool,
    cores: usize,
    proxy_cpus: String,
    load_cpus: String,
    conns: usize,
    rate: u64,
    idle_conns: usize,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

impl Report {
    pub fn new(
        quick: &bool,
        cores: usize,
        proxy_cpus: &str,
        load_cpus: &str,
        conns: usize,
        rate: u64,
        idle_conns: usize,
    ) -> Report {
        Report {
            rows: Vec::new(),
            restarts: Vec::new(),
            drivers: Vec::new(),
            cluster: Vec::new(),
            scaled: Vec::new(),
            judge: None,
            quick: *quick,
            cores,
            proxy_cpus: proxy_cpus.into(),
            load_cpus: load_cpus.into(),
            conns,
            rate,
            idle_conns,
        }
    }

    fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// The better peer by `f` (higher is better): its name and value.
    fn best_peer(&self, f: impl Fn(&Row) -> Option<f64>) -> Option<(&'static str, f64)> {
        ["nginx", "haproxy", "caddy"]
            .iter()
            .filter_map(|n| self.row(n).and_then(&f).map(|v| (*n, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The targets of the performance round, each with its numbers.
    fn targets(&self, o: &mut String, bg: &Row) {
        let check = |ok: bool| if ok { "met" } else { "**not met**" };
        fn per_cpu(c: Option<(f64, f64)>) -> Option<f64> {
            c.map(|(u, k)| 1e6 / (u + k).max(0.001))
        }
        for (label, pick) in [
            (
                "small responses",
                (|r: &Row| per_cpu(r.cpu_us)) as fn(&Row) -> Option<f64>,
            ),
            ("64 KiB responses", |r: &Row| per_cpu(r.cpu_us_large)),
        ] {
            if let (Some(mine), Some((peer, best))) = (pick(bg), self.best_peer(pick)) {
                let _ = writeln!(
                    o,
                    "- Requests per proxy CPU-second at {} connections, {label}: ≥ 1.1 × the better peer ({peer}, {best:.0}): {mine:.0}, {:.2}× — {}",
                    self.conns,
                    mine / best.max(1.0),
                    check(mine >= 1.1 * best)
                );
            }
        }
        if let (Some((user, kernel)), Some((_, best))) =
            (bg.cpu_us, self.best_peer(|r| per_cpu(r.cpu_us)))
        {
            let _ = writeln!(
                o,
                "  - At equal CPU: bluegreen {:.1} µs per request ({user:.1} user + {kernel:.1} kernel), the better peer {:.1} µs. The kernel part alone caps the ratio at {:.2}× even with no user-space work at all.",
                user + kernel,
                1e6 / best.max(1.0),
                1e6 / best.max(1.0) / kernel.max(0.001)
            );
        }
        let p99 = |r: &Row| r.small.as_ref().map(|w| -(w.p99_us as f64));
        if let (Some(mine), Some((peer, best))) = (p99(bg), self.best_peer(p99)) {
            let _ = writeln!(
                o,
                "- p99 at {} connections ≤ the better peer's ({peer}, {} ms): {} ms — {}",
                self.conns,
                ms(-best as u64),
                ms(-mine as u64),
                check(mine >= best)
            );
        }
        let fixed = |r: &Row| r.fixed.map(|f| -(f.1 as f64));
        if let (Some(mine), Some((peer, best))) = (fixed(bg), self.best_peer(fixed)) {
            let _ = writeln!(
                o,
                "- p99 at a fixed {} req/s ≤ the better peer's ({peer}, {} ms): {} ms — {}",
                self.rate,
                ms(-best as u64),
                ms(-mine as u64),
                check(mine >= best)
            );
        }
        for rate in bg.at_rates.iter().map(|a| a.rate) {
            let total = |r: &Row| {
                r.at_rates
                    .iter()
                    .find(|a| a.rate == rate && a.requests > 0)
                    .map(|a| -(a.user_us + a.sys_us))
            };
            if let (Some(mine), Some((peer, best))) = (total(bg), self.best_peer(total)) {
                let _ = writeln!(
                    o,
                    "- CPU per request at a fixed {rate} req/s ≤ the better peer's ({peer}, {:.1} µs): {:.1} µs, {:.2}× — {}",
                    -best,
                    -mine,
                    mine / best,
                    check(mine >= best)
                );
            }
        }
        if let (Some((kib, n)), Some((nginx, _))) =
            (bg.rss_conns, self.row("nginx").and_then(|r| r.rss_conns))
        {
            let _ = writeln!(
                o,
                "- Memory with {n} idle keep-alive connections ≤ 1.5 × nginx's ({} MiB): {} MiB, {:.2}× — {}",
                mib(nginx),
                mib(kib),
                kib as f64 / nginx.max(1) as f64,
                check(kib as f64 <= 1.5 * nginx as f64)
            );
        }
        let sw = bg.switching.clone().unwrap_or_default();
        let _ = writeln!(o, "- Zero errors and wrong-side answers across {} switches: {} errors, {} non-2xx, {} wrong side — {}", sw.switches, sw.errors, sw.non2xx, sw.wrong_side, check(sw.errors + sw.non2xx + sw.wrong_side == 0));
        let _ = writeln!(
            o,
            "- HTTP/2 (h2c and over TLS): see the HTTP/2 table above."
        );
        if let Some(direct) = self.row("direct").and_then(|r| r.small.as_ref()) {
            let _ = writeln!(
                o,
                "- The load generator and the upstream share the other core: without any proxy they reach {:.0} req/s, the most any proxy can be offered here, so throughput itself is not compared, CPU per request is.",
                direct.rps
            );
        }
    }

    fn ratio(&self, f: impl Fn(&Row) -> Option<f64>, other: &str) -> String {
        match (
            self.row("bluegreen").and_then(&f),
            self.row(other).and_then(&f),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        }
    }

    pub fn render(&self, args: &Args, env: &Env) -> String {
        let mut o = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(o, "# Benchmarks\n");
        let _ = writeln!(
            o,
            "Generated by `bench/run{}` on {}.",
            if self.quick { " --quick" } else { "" },
            sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        );
        if self.quick {
            let _ = writeln!(o, "\n**Quick mode: every part ran for about a second. These numbers only show the harness works.**");
        }
        let _ = writeln!(
            o,
            "\n- Machine: {} cores, {cpu}, Linux {}",
            self.cores,
            sh("uname", &["-r"])
        );
        let _ = writeln!(
            o,
            "- Versions: {}; {}; {}; Caddy {}; {}; h2load {}",
            sh(&env.bluegreen.display().to_string(), &["--version"]),
            sh("nginx", &["-v"]),
            sh("haproxy", &["-v"]),
            sh("caddy", &["version"]),
            sh("wrk", &["-v"]),
            sh("h2load", &["--version"])
        );
        let _ = writeln!(
            o,
            "- Placement: every proxy pinned to CPU {} with one worker (bluegreen `workers = 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`, Caddy `GOMAXPROCS=1`); the upstream (nginx, 1 worker), wrk (1 thread) and the Rust load generators on CPU {}.",
            if self.proxy_cpus.is_empty() { "(not pinned: one core)" } else { &self.proxy_cpus },
            if self.load_cpus.is_empty() { "(same core)" } else { &self.load_cpus }
        );
        let _ = writeln!(o, "- Configs: `bench/conf/` (bluegreen.toml, nginx.conf + nginx-live.conf, haproxy.cfg, caddy.json, upstream-nginx.conf). `direct` is the upstream without a proxy.");
        if let Some(w) = self.row("bluegreen").and_then(|r| r.small.as_ref()) {
            let _ = writeln!(
                o,
                "- Throughput command (per proxy port): `{}` (and `/64k`)",
                w.command
            );
        }
        let _ = writeln!(o, "- Rerun: `bench/run` (installs nginx, haproxy, caddy, wrk, h2load when missing; builds bluegreen in release mode).");

        let _ = writeln!(
            o,
            "\n## Throughput and latency at {} connections\n",
            self.conns
        );
        let _ = writeln!(o, "| proxy | req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU % | 64 KiB req/s | 64 KiB p99 ms |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let (Some(s), Some(l)) = (&r.small, &r.large) else {
                continue;
            };
            let _ = writeln!(
                o,
                "| {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
                r.name,
                s.rps,
                ms(s.p50_us),
                ms(s.p99_us),
                ms(s.p999_us),
                s.errors + l.errors,
                r.cpu_pct,
                l.rps,
                ms(l.p99_us)
            );
        }
        if self.rows.iter().any(|r| r.cpu_us.is_some()) {
            let _ = writeln!(
                o,
                "\n## CPU per request at {} connections (the proxy's own, from /proc)\n",
                self.conns
            );
            let _ = writeln!(o, "Equal CPU compared directly: what one request costs the proxy in user space and in the kernel (loopback TCP on both sides, waking the peers). Throughput at saturation is at most 1 / total.\n");
            let _ = writeln!(
                o,
                "| proxy | user µs | kernel µs | total µs | requests per CPU-second | 64 KiB: user µs | kernel µs | requests per CPU-second |"
            );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.rows {
                if let Some((user, sys)) = r.cpu_us {
                    let large = match r.cpu_us_large {
                        Some((u, k)) => {
                            format!("{u:.1} | {k:.1} | {:.0}", 1e6 / (u + k).max(0.001))
                        }
                        None => "- | - | -".into(),
                    };
                    let _ = writeln!(
                        o,
                        "| {} | {user:.1} | {sys:.1} | {:.1} | {:.0} | {large} |",
                        r.name,
                        user + sys,
                        1e6 / (user + sys).max(0.001)
                    );
                }
            }
        }
        for r in &self.rows {
            if let (Some(off), Some((on, mirrored, dropped))) = (r.fixed, r.shadowed) {
                let _ = writeln!(o, "\n## Live latency with shadowing off and on ({} req/s, 100 % of requests mirrored to the idle side)\n", self.rate);
                let _ = writeln!(
                    o,
                    "| {} | p50 ms | p99 ms | p99.9 ms | errors | mirrored | dropped |",
                    r.name
                );
                let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
                let _ = writeln!(
                    o,
                    "| shadowing off | {} | {} | {} | {} | - | - |",
                    ms(off.0),
                    ms(off.1),
                    ms(off.2),
                    off.3
                );
                let _ = writeln!(
                    o,
                    "| shadowing on | {} | {} | {} | {} | {mirrored} | {dropped} |",
                    ms(on.0),
                    ms(on.1),
                    ms(on.2),
                    on.3
                );
                let ratio = |a: u64, b: u64| if a == 0 { 0.0 } else { b as f64 / a as f64 };
                let _ = writeln!(
                    o,
                    "| on / off | {:.2}× | {:.2}× | {:.2}× | | | |",
                    ratio(off.0, on.0),
                    ratio(off.1, on.1),
                    ratio(off.2, on.2)
                );
            }
        }
        if self.rows.iter().any(|r| !r.at_rates.is_empty()) {
            let _ = writeln!(o, "\n## CPU per request below saturation (fixed rates, 16 keep-alive connections, from /proc)\n");
            let _ = writeln!(o, "Where proxies spend most of their time: the same requests at a steady rate, the proxy's CPU divided by the requests answered. Ticks are 1/100 s: about ±1 % at 1,000 req/s over 10 s.\n");
            let _ = writeln!(
                o,
                "| proxy | req/s | requests | user µs | kernel µs | total µs | errors |"
            );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
            for r in &self.rows {
                for a in &r.at_rates {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
                        r.name,
                        a.rate,
                        a.requests,
                        a.user_us,
                        a.sys_us,
                        a.user_us + a.sys_us,
                        a.errors
                    );
                }
            }
        }
        let _ = writeln!(o, "\n## Latency at a fixed {} req/s (below saturation; measured from when each request was due)\n", self.rate);
        let _ = writeln!(o, "| proxy | p50 ms | p99 ms | p99.9 ms | errors |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        for r in &self.rows {
            if let Some((a, b, c, e)) = r.fixed {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {e} |",
                    r.name,
                    ms(a),
                    ms(b),
                    ms(c)
                );
            }
        }
        let _ = writeln!(
            o,
            "\n## Switching every 100 ms under keep-alive load (32 connections)\n"
        );
        let _ = writeln!(o, "bluegreen: its switch API. nginx: rewrite the upstream, `SIGHUP` (= `nginx -s reload`). HAProxy: runtime API `set server … state ready` then `… state maint`. Caddy: its admin API, a `PATCH` of the reverse proxy's upstreams (applied as a graceful config reload). A wrong-side answer is one from the old side to a request that started after the switch call returned.\n");
        let _ = writeln!(
            o,
            "| proxy | switches | requests | errors/resets | non-2xx | wrong side |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            if let Some(s) = &r.switching {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.name, s.switches, s.requests, s.errors, s.non2xx, s.wrong_side
                );
            }
        }
        let _ = writeln!(o, "\n## Memory (resident, all processes of the proxy)\n");
        let _ = writeln!(
            o,
            "| proxy | idle MiB | with {} idle keep-alive connections MiB | connections held |",
            self.idle_conns
        );
        let _ = writeln!(o, "|---|---:|---:|---:|");
        for r in &self.rows {
            if let Some((kib, n)) = r.rss_conns {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {n} |",
                    r.name,
                    mib(r.rss_idle_kib),
                    mib(kib)
                );
            }
        }
        let _ = writeln!(o, "\n## WebSockets across a switch\n");
        let _ = writeln!(
            o,
            "| proxy | open before | still echoing after the switch |"
        );
        let _ = writeln!(o, "|---|---:|---:|");
        for r in &self.rows {
            if let Some((alive, opened)) = r.websockets {
                let _ = writeln!(o, "| {} | {opened} | {alive} |", r.name);
            }
        }

        crate::scaling::render(&mut o, &self.rows, &self.scaled, self.conns);
        crate::h2::render(&mut o, &self.rows);
        crate::tls::render(&mut o, &self.rows);
        crate::restarts::render(&mut o, &self.restarts);
        crate::drivers::render(&mut o, &self.drivers);
        crate::cluster::render(&mut o, &self.cluster);
        if let Some(judge) = &self.judge {
            o.push_str(judge);
        }

        let _ = writeln!(o, "\n## Ratios (bluegreen / peer, same run)\n");
        let _ = writeln!(o, "| metric | / nginx | / HAProxy | / Caddy | / direct |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        type Metric = (&'static str, Box<dyn Fn(&Row) -> Option<f64>>);
        let metrics: Vec<Metric> = vec![
            (
                "req/s (higher is better)",
                Box::new(|r: &Row| r.small.as_ref().map(|w| w.rps)),
            ),
            (
                "requests per proxy CPU-second (higher is better)",
                Box::new(|r: &Row| r.cpu_us.map(|(u, k)| 1e6 / (u + k).max(0.001))),
            ),
            (
                "64 KiB requests per proxy CPU-second (higher is better)",
                Box::new(|r: &Row| r.cpu_us_large.map(|(u, k)| 1e6 / (u + k).max(0.001))),
            ),
            (
                "64 KiB req/s (higher is better)",
                Box::new(|r: &Row| r.large.as_ref().map(|w| w.rps)),
            ),
            (
                "p99 at fixed concurrency (lower is better)",
                Box::new(|r: &Row| r.small.as_ref().map(|w| w.p99_us as f64)),
            ),
            (
                "p99 at fixed rate (lower is better)",
                Box::new(|r: &Row| r.fixed.map(|f| f.1 as f64)),
            ),
            (
                "idle memory (lower is better)",
                Box::new(|r: &Row| Some(r.rss_idle_kib as f64)),
            ),
            (
                "memory with idle connections (lower is better)",
                Box::new(|r: &Row| r.rss_conns.map(|m| m.0 as f64)),
            ),
        ];
        for (name, f) in &metrics {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} |",
                self.ratio(f, "nginx"),
                self.ratio(f, "haproxy"),
                self.ratio(f, "caddy"),
                self.ratio(f, "direct")
            );
        }

        let _ = writeln!(o, "\n## Targets\n");
        if let Some(bg) = self.row("bluegreen") {
            self.targets(&mut o, bg);
        }
        if let Ok(notes) = std::fs::read_to_string(args.conf.join("../NOTES.md")) {
            let _ = writeln!(o, "\n{notes}");
        }
        o
    }
}
