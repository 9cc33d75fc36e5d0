//! The app's own resources per side, read from `/proc` once a second for
//! the processes the supervisor runs (each process group whole, so a
//! gunicorn master and its workers count together): CPU seconds, resident
//! memory, open file descriptors, restarts, beside the router's request
//! count of the same moment. The bake compares the new side's series with
//! the old side's from while it was live.

use crate::supervisor::{group_members, Supervisor};
use bluegreen_core::analysis::AppSample;
use bluegreen_core::{Side, Sides};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the processes are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept per side: two hours at one a second.
const KEEP: usize = 7200;

/// One side's series, for one version.
#[derive(Default)]
struct Series {
    version: String,
    samples: VecDeque<AppSample>,
    /// CPU seconds of each process last seen, by (pid, start time), so a
    /// process that exits or restarts never makes the sum go backwards.
    last_cpu: HashMap<(u32, u64), f64>,
    cpu_s: f64,
}

/// Reads and keeps both sides' series.
pub struct Resources {
    series: Mutex<Sides<Series>>,
}

/// A side's resources now, for `status` and `/metrics`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SideResources {
    pub version: String,
    pub processes: u32,
    pub cpu_seconds: f64,
    /// Cores used over the last ten seconds.
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    pub restarts: u64,
    /// CPU milliseconds per request over the last minute, when it had some.
    pub cpu_ms_per_request: Option<f64>,
}

/// What one process looks like in `/proc`.
struct ProcRead {
    key: (u32, u64),
    cpu_s: f64,
    rss_bytes: u64,
    fds: u64,
}

fn read_proc(pid: u32) -> Option<ProcRead> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, from 0: state(0) ... utime(11) stime(12) ...
    // starttime(19) vsize(20) rss(21, pages).
    let ticks = clock_ticks();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcRead {
        key: (pid, start),
        cpu_s: (utime + stime) / ticks,
        rss_bytes: rss_pages * page_size(),
        fds,
    })
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|t| t as u64)
        .unwrap_or(4096)
}

impl Resources {
    /// Starts reading the supervisor's processes once a second, for as long
    /// as the returned value lives (the task holds a weak reference).
    pub fn start(
        supervisor: Arc<Supervisor>,
        router: Arc<dyn crate::routing::Routing>,
    ) -> Arc<Resources> {
        let me = Arc::new(Resources {
            series: Mutex::new(Sides::default()),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let table = supervisor.table();
                // Reading /proc is blocking file I/O: off the async threads.
                let reads = tokio::task::spawn_blocking(move || {
                    Side::ALL.map(|side| {
                        table.sides[side].as_ref().map(|procs| {
                            let reads: Vec<ProcRead> = procs
                                .procs
                                .iter()
                                .filter(|p| p.pid != 0)
                                .flat_map(|p| group_members(p.pid))
                                .filter_map(read_proc)
                                .collect();
                            let restarts: u64 = procs.procs.iter().map(|p| p.restarts as u64).sum();
                            (procs.version.clone(), reads, restarts)
                        })
                    })
                })
                .await;
                let Ok(reads) = reads else { continue };
                let at_ms = crate::now_ms();
                for (side, read) in Side::ALL.into_iter().zip(reads) {
                    let requests = router.live_window(side).requests;
                    me.push(side, read, requests, at_ms);
                }
            }
        });
        me
    }

    fn push(
        &self,
        side: Side,
        read: Option<(String, Vec<ProcRead>, u64)>,
        requests: u64,
        at_ms: u64,
    ) {
        let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut all[side];
        let Some((version, procs, restarts)) = read else {
            *s = Series::default();
            return;
        };
        if s.version != version {
            *s = Series {
                version,
                ..Series::default()
            };
        }
        let mut seen = HashMap::with_capacity(procs.len());
        let (mut rss, mut fds) = (0, 0);
        for p in &procs {
            let before = s.last_cpu.get(&p.key).copied().unwrap_or(0.0);
            s.cpu_s += (p.cpu_s - before).max(0.0);
            seen.insert(p.key, p.cpu_s);
            rss += p.rss_bytes;
            fds += p.fds;
        }
        s.last_cpu = seen;
        s.samples.push_back(AppSample {
            at_ms,
            cpu_s: s.cpu_s,
            rss_bytes: rss,
            fds,
            restarts,
            requests,
        });
        if s.samples.len() > KEEP {
            s.samples.pop_front();
        }
    }

    /// `side`'s samples of `version` taken in `[from_ms, to_ms]`.
    pub fn series(&self, side: Side, version: &str, from_ms: u64, to_ms: u64) -> Vec<AppSample> {
        let all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = &all[side];
        if s.version != version {
            return Vec::new();
        }
        s.samples
            .iter()
            .filter(|x| x.at_ms >= from_ms && x.at_ms <= to_ms)
            .copied()
            .collect()
    }

    /// Both sides now.
    pub fn now(&self) -> Sides<Option<SideResources>> {
        let all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let one = |s: &Series| {
            let last = *s.samples.back()?;
            let ago = |secs: u64| {
                s.samples
                    .iter()
                    .find(|x| x.at_ms + secs * 1000 >= last.at_ms)
                    .copied()
                    .unwrap_or(last)
            };
            let ten = ago(10);
            let minute = ago(60);
            let secs = last.at_ms.saturating_sub(ten.at_ms) as f64 / 1000.0;
            let requests = last.requests.saturating_sub(minute.requests);
            Some(SideResources {
                version: s.version.clone(),
                processes: s.last_cpu.len() as u32,
                cpu_seconds: last.cpu_s,
                cpu_cores: if secs > 0.0 {
                    (last.cpu_s - ten.cpu_s) / secs
                } else {
                    0.0
                },
                rss_bytes: last.rss_bytes,
                fds: last.fds,
                restarts: last.restarts,
                cpu_ms_per_request: (requests > 0)
                    .then(|| (last.cpu_s - minute.cpu_s) * 1000.0 / requests as f64),
            })
        };
        Sides {
            blue: one(&all.blue),
            green: one(&all.green),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_with_cpu_memory_and_fds() {
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let r = read_proc(std::process::id()).expect("own /proc entry");
        assert!(r.rss_bytes > 1_000_000, "{}", r.rss_bytes);
        assert!(r.fds >= 3, "{}", r.fds);
        assert!(r.cpu_s >= 0.0);
    }
}
