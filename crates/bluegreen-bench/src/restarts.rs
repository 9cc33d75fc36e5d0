//! Restarts under load: each proxy restarted the way its users do it while
//! wrk holds keep-alive connections open, counting refused connections and
//! failed requests. bluegreen `upgrade` (a new process on the same sockets),
//! nginx's binary upgrade (`USR2`, `WINCH`, `QUIT`) and `-s reload` (`HUP`),
//! HAProxy's master-worker reload (`USR2`, listeners passed on through the
//! `expose-fd listeners` socket).

use crate::procs::{Env, How, Kind, Proxy};
use crate::{wrk_url, Plan};
use anyhow::Result;
use std::fmt::Write;
use std::time::Duration;

/// One proxy and method: what the clients saw.
pub struct Restarts {
    pub proxy: &'static str,
    pub how: &'static str,
    pub restarts: usize,
    pub requests: u64,
    /// Connections refused (or that failed to open).
    pub refused: u64,
    /// Requests that failed: resets, timeouts, non-2xx.
    pub failed: u64,
    pub command: String,
}

pub fn part(env: &Env, plan: &Plan, blue: u16, green: u16) -> Result<Vec<Restarts>> {
    let quick = plan.wrk_secs <= 1;
    let count = if quick { 5 } else { 20 };
    let every = Duration::from_millis(400);
    let secs = 2 + (count as u64 * every.as_millis() as u64).div_ceil(1000);
    let mut out = Vec::new();
    for (kind, how) in [
        (Kind::Bluegreen, How::BluegreenUpgrade),
        (Kind::Nginx, How::NginxBinaryUpgrade),
        (Kind::Nginx, How::NginxReload),
        (Kind::Haproxy, How::HaproxyReload),
        (Kind::Caddy, How::CaddyLoad),
    ] {
        eprintln!("== {} restarts: {}", kind.name(), how.name());
        let mut proxy = Proxy::start_as(kind, env, blue, green, true)?;
        let url = format!("http://127.0.0.1:{}/", proxy.port);
        wrk_url(env, &url, 1, plan.conns, &[])?; // warm-up
        let load = {
            let (env, url, conns) = (env.clone(), url.clone(), plan.conns);
            std::thread::spawn(move || wrk_url(&env, &url, secs, conns, &[]))
        };
        std::thread::sleep(Duration::from_millis(700));
        let mut done = 0;
        for _ in 0..count {
            match proxy.restart(how) {
                Ok(()) => done += 1,
                Err(e) => eprintln!("restart failed: {e:#}"),
            }
            std::thread::sleep(every);
        }
        let wrk = load
            .join()
            .map_err(|_| anyhow::anyhow!("wrk thread panicked"))??;
        out.push(Restarts {
            proxy: kind.name(),
            how: how.name(),
            restarts: done,
            requests: wrk.requests,
            refused: wrk.connect_errors,
            failed: wrk.errors - wrk.connect_errors,
            command: wrk.command.clone(),
        });
        proxy.stop_successors();
        drop(proxy);
    }
    Ok(out)
}

pub fn render(o: &mut String, rows: &[Restarts]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n## Restarts under load\n");
    let _ = writeln!(
        o,
        "| proxy | restarted by | restarts | requests | refused connections | failed requests |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            r.proxy, r.how, r.restarts, r.requests, r.refused, r.failed
        );
    }
    if let Some(bg) = rows.iter().find(|r| r.proxy == "bluegreen") {
        let ok = bg.refused + bg.failed == 0 && bg.restarts > 0;
        let _ = writeln!(
            o,
            "\n- Zero refused connections and failed requests over {} bluegreen upgrades: {} refused, {} failed — {}",
            bg.restarts,
            bg.refused,
            bg.failed,
            if ok { "met" } else { "**not met**" }
        );
        let _ = writeln!(
            o,
            "- Load: `{}`, one restart every 400 ms after 0.7 s; failed = wrk's read, write and timeout errors plus non-2xx answers.",
            bg.command
        );
    }
}
