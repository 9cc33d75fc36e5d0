//! The built-in supervisor: runs one app process per upstream address of a
//! side, restarts it with backoff when it dies, and stops it with SIGTERM,
//! then SIGKILL after a grace period.
//!
//! Processes outlive `bluegreen serve` on purpose: each runs in its own
//! process group with output to a log file (never a pipe to us), so a restart
//! or upgrade of the router does not take the app down. On start, the
//! supervisor re-adopts every recorded process that is still running (same
//! pid and start time) and restarts the ones that are not.

use bluegreen_core::config::deploy::SupervisorConfig;
use bluegreen_core::{Side, Sides};
use bluegreen_store::{load_json, save_json, StateStore, StoreError, PROCESSES_KEY};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One supervised process, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub address: String,
    pub pid: u32,
    /// Kernel start time (clock ticks since boot), to tell a pid reused by another process.
    pub start_time: u64,
    pub argv: Vec<String>,
    pub log: PathBuf,
    pub restarts: u32,
    /// How the last run ended, if it did.
    #[serde(default)]
    pub last_exit: Option<String>,
}

/// What runs on one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideProcs {
    pub version: String,
    pub env: BTreeMap<String, String>,
    pub procs: Vec<ProcRecord>,
}

/// The persisted process table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessTable {
    pub sides: Sides<Option<SideProcs>>,
}

struct Monitor {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Runs and watches app processes for both sides.
pub struct Supervisor {
    config: SupervisorConfig,
    workdir: PathBuf,
    logs: PathBuf,
    exe: String,
    store: Arc<dyn StateStore>,
    /// Held only to read or change the table, never across I/O.
    table: Mutex<ProcessTable>,
    /// Orders writes of the table: each writes the state as of its turn.
    writes: tokio::sync::Mutex<()>,
    monitors: tokio::sync::Mutex<Sides<Vec<Monitor>>>,
    /// The log rotation task runs (once per process).
    rotating: std::sync::atomic::AtomicBool,
}

/// Supervisor failures.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start {argv:?} for {address}: {source}")]
    Spawn {
        address: String,
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Supervisor {
    /// A supervisor keeping its table in `store` and logs under `state_dir/logs`.
    pub fn new(
        config: SupervisorConfig,
        workdir: &Path,
        state_dir: &Path,
        store: Arc<dyn StateStore>,
    ) -> Result<Arc<Supervisor>, SupervisorError> {
        let logs = state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| SupervisorError::Io {
            path: logs.clone(),
            source,
        })?;
        let table: ProcessTable = load_json(store.as_ref(), PROCESSES_KEY)?.unwrap_or_default();
        let exe = crate::exe().to_string();
        Ok(Arc::new(Supervisor {
            config,
            workdir: workdir.to_path_buf(),
            logs,
            exe,
            store,
            table: Mutex::new(table),
            writes: tokio::sync::Mutex::new(()),
            monitors: tokio::sync::Mutex::new(Sides::default()),
            rotating: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The current process table.
    pub fn table(&self) -> ProcessTable {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why a side's processes may not be serving: the ones that keep exiting,
    /// with the last line of their log. `None` when all run undisturbed.
    pub fn trouble(&self, side: Side) -> Option<String> {
        let table = self.table();
        let procs = table.sides[side].as_ref()?;
        let lines: Vec<String> = procs
            .procs
            .iter()
            .filter(|p| p.restarts > 0)
            .map(|p| {
                let last_line = std::fs::read_to_string(&p.log)
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                format!(
                    "the app for {} exited {} time(s), last {}; log {}: {last_line}",
                    p.address,
                    p.restarts,
                    p.last_exit.as_deref().unwrap_or("?"),
                    p.log.display()
                )
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    /// Rotates app logs that grew past `log_max_bytes`, every few seconds,
    /// for as long as the supervisor lives. The app writes with `O_APPEND`
    /// to a file it was handed, so the log is copied to `.1` and truncated in
    /// place (logrotate's copytruncate): a line written between the two
    /// steps can be lost, never the app stopped or its output blocked.
    fn spawn_log_rotation(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOG_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(sup) = me.upgrade() else { return };
                let table = sup.table();
                let logs: Vec<PathBuf> = Side::ALL
                    .iter()
                    .filter_map(|side| table.sides[*side].as_ref())
                    .flat_map(|s| s.procs.iter().map(|p| p.log.clone()))
                    .collect();
                let (max, keep) = (sup.config.log_max_bytes, sup.config.log_files);
                drop(sup);
                let rotated = tokio::task::spawn_blocking(move || {
                    logs.iter()
                        .filter_map(|l| rotate_if_large(l, max, keep).err().map(|e| (l.clone(), e)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                for (log, e) in rotated {
                    tracing::warn!(log = %log.display(), error = %e, "supervisor: could not rotate an app log");
                }
            }
        });
    }

    /// Re-adopts recorded processes that still run; restarts the others.
    pub async fn adopt(self: &Arc<Self>) -> Result<(), SupervisorError> {
        if !self
            .rotating
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.spawn_log_rotation();
        }
        let table = self.table();
        let mut monitors = self.monitors.lock().await;
        for side in Side::ALL {
            let Some(procs) = &table.sides[side] else {
                continue;
            };
            for (i, p) in procs.procs.iter().enumerate() {
                let alive = is_same_process(p.pid, p.start_time);
                tracing::info!(%side, pid = p.pid, address = %p.address, alive, "supervisor: recorded process {}", if alive { "re-adopted" } else { "gone; restarting" });
                let child = if alive {
                    None
                } else {
                    Some(self.spawn_at(side, i).await?)
                };
                monitors[side].push(self.monitor(side, i, child));
            }
        }
        Ok(())
    }

    /// Stops watching the app processes without touching them: a new
    /// process takes them over (a hitless upgrade) and `adopt` takes them
    /// back if it does not.
    pub async fn detach(&self) {
        let mut monitors = self.monitors.lock().await;
        for side in Side::ALL {
            for m in monitors[side].drain(..) {
                m.handle.abort();
                let _ = m.handle.await;
            }
        }
    }

    /// Replaces whatever runs on `side` with `version`: stops the old
    /// processes, starts one per address, and records them.
    pub async fn deploy(
        self: &Arc<Self>,
        side: Side,
        version: &str,
        addresses: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<ProcRecord>, SupervisorError> {
        self.stop(side).await?;
        let mut monitors = self.monitors.lock().await;
        {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.sides[side] = Some(SideProcs {
                version: version.to_string(),
                env: env.clone(),
                procs: addresses
                    .iter()
                    .map(|a| ProcRecord {
                        address: a.clone(),
                        pid: 0,
                        start_time: 0,
                        argv: self.argv(side, version, a),
                        log: self
                            .logs
                            .join(format!("{side}-{}.log", a.replace([':', '/'], "_"))),
                        restarts: 0,
                        last_exit: None,
                    })
                    .collect(),
            });
        }
        for i in 0..addresses.len() {
            let child = self.spawn_at(side, i).await?;
            monitors[side].push(self.monitor(side, i, Some(child)));
        }
        Ok(self.table().sides[side]
            .clone()
            .map(|s| s.procs)
            .unwrap_or_default())
    }

    /// Stops every process of `side` (SIGTERM, then SIGKILL after the grace)
    /// and forgets them.
    pub async fn stop(&self, side: Side) -> Result<(), SupervisorError> {
        let mut monitors = self.monitors.lock().await;
        for m in monitors[side].drain(..) {
            m.stop.cancel();
            let _ = m.handle.await;
        }
        let had = self.table.lock().unwrap_or_else(|p| p.into_inner()).sides[side]
            .take()
            .is_some();
        if had {
            self.persist().await?;
        }
        Ok(())
    }

    /// Writes the table as it is now, off the async threads and outside
    /// the table's lock (status reads never wait for an fsync).
    async fn persist(&self) -> Result<(), SupervisorError> {
        let _turn = self.writes.lock().await;
        let copy = self.table();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || save_json(store.as_ref(), PROCESSES_KEY, &copy))
            .await
            .map_err(|e| SupervisorError::Io {
                path: self.store.locate(PROCESSES_KEY),
                source: std::io::Error::other(e),
            })??;
        Ok(())
    }

    /// Stops everything (for `serve` when `stop_on_exit` is set).
    pub async fn stop_all(&self) {
        for side in Side::ALL {
            if let Err(e) = self.stop(side).await {
                tracing::error!(%side, error = %e, "supervisor: stop failed");
            }
        }
    }

    fn argv(&self, side: Side, version: &str, address: &str) -> Vec<String> {
        let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
        self.config.run.render(&[
            ("env", side.as_str()),
            ("version", version),
            ("port", port),
            ("host", host),
            ("address", address),
            ("bluegreen", &self.exe),
        ])
    }

    /// Starts process `i` of `side` and records its pid.
    async fn spawn_at(
        self: &Arc<Self>,
        side: Side,
        i: usize,
    ) -> Result<tokio::process::Child, SupervisorError> {
        let (rec, version, env) = {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let procs = table.sides[side].as_ref().expect("side has processes");
            (
                procs.procs[i].clone(),
                procs.version.clone(),
                procs.env.clone(),
            )
        };
        let io_err = |source| SupervisorError::Io {
            path: rec.log.clone(),
            source,
        };
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rec.log)
            .await
            .map_err(io_err)?
            .into_std()
            .await;
        let log2 = log.try_clone().map_err(io_err)?;
        let mut cmd = std::process::Command::new(&rec.argv[0]);
        cmd.args(&rec.argv[1..])
            .current_dir(&self.workdir)
            .envs(&self.config.env)
            .envs(&env)
            .env("BLUEGREEN_ENV", side.as_str())
            .env("BLUEGREEN_VERSION", &version)
            .env("BLUEGREEN_ADDRESS", &rec.address)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own process group: a Ctrl-C or SIGTERM to the router's group
            // must not reach the app, and a stop reaches all of the app's.
            .process_group(0);
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|source| SupervisorError::Spawn {
                address: rec.address.clone(),
                argv: rec.argv.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let started = start_time(pid).unwrap_or(0);
        {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(procs) = table.sides[side].as_mut() {
                procs.procs[i].pid = pid;
                procs.procs[i].start_time = started;
            }
        }
        tracing::info!(%side, pid, address = %rec.address, %version, "supervisor: started");
        self.persist().await?;
        Ok(child)
    }

    /// Watches process `i`: restarts it with backoff when it dies, stops it
    /// when told to. `child` is `None` for a re-adopted process.
    fn monitor(
        self: &Arc<Self>,
        side: Side,
        i: usize,
        child: Option<tokio::process::Child>,
    ) -> Monitor {
        let stop = CancellationToken::new();
        let sup = self.clone();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let mut child = child;
            let mut backoff = Duration::from_millis(500);
            loop {
                let (pid, started) = {
                    let t = sup.table.lock().unwrap_or_else(|p| p.into_inner());
                    let r = &t.sides[side].as_ref().expect("monitored side").procs[i];
                    (r.pid, r.start_time)
                };
                let began = Instant::now();
                let status = tokio::select! {
                    s = wait_exit(&mut child, pid, started) => s,
                    _ = token.cancelled() => {
                        terminate(&mut child, pid, started, sup.config.stop_grace).await;
                        return;
                    }
                };
                if began.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(500);
                }
                tracing::warn!(%side, pid, %status, restart_in_ms = backoff.as_millis() as u64, "supervisor: app process exited; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = token.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                {
                    let mut t = sup.table.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(s) = t.sides[side].as_mut() {
                        s.procs[i].restarts += 1;
                        s.procs[i].last_exit = Some(status.clone());
                    }
                }
                match sup.spawn_at(side, i).await {
                    Ok(c) => child = Some(c),
                    Err(e) => {
                        tracing::error!(%side, error = %e, "supervisor: restart failed");
                        child = None;
                    }
                }
            }
        });
        Monitor { stop, handle }
    }
}

/// How often app log sizes are checked.
const LOG_CHECK: Duration = Duration::from_secs(5);

/// `log` → `log.1` → ... → `log.keep` (the oldest dropped) when `log` is
/// larger than `max`; the live file is truncated in place.
pub fn rotate_if_large(log: &Path, max: u64, keep: u32) -> std::io::Result<()> {
    match std::fs::metadata(log) {
        Ok(m) if m.len() > max => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let numbered = |i: u32| PathBuf::from(format!("{}.{i}", log.display()));
    for i in (1..keep).rev() {
        if numbered(i).exists() {
            std::fs::rename(numbered(i), numbered(i + 1))?;
        }
    }
    std::fs::copy(log, numbered(1))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)?
        .set_len(0)
}

/// Waits for a process to end: our child by `wait`, an adopted one by polling.
async fn wait_exit(child: &mut Option<tokio::process::Child>, pid: u32, started: u64) -> String {
    match child {
        Some(c) => match c.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        },
        None => {
            // Not our child (adopted after a restart): the kernel will not tell
            // us, so look every 250 ms.
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if pid == 0 || !is_same_process(pid, started) {
                    return "exited (adopted process)".into();
                }
            }
        }
    }
}

/// SIGTERM to the app's process group, wait up to `grace`, then SIGKILL to
/// the group; reaps our own children. A process we did not start (adopted)
/// is signalled only while its pid still names the process with the
/// recorded start time; our own child cannot have been replaced.
async fn terminate(
    child: &mut Option<tokio::process::Child>,
    pid: u32,
    started: u64,
    grace: Duration,
) {
    let ours = child.as_ref().is_some_and(|c| c.id().is_some());
    if pid == 0 || !(ours || is_same_process(pid, started)) {
        return;
    }
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let exited = tokio::time::timeout(grace, wait_exit(child, pid, started))
        .await
        .is_ok();
    if !exited {
        tracing::warn!(
            pid,
            "supervisor: no exit within the stop grace; sending SIGKILL"
        );
        let _ = killpg(group, Signal::SIGKILL);
        let _ = wait_exit(child, pid, started).await;
        return;
    }
    // The leader is gone; what it started (a shell wrapper's children) gets
    // the rest of the grace, then SIGKILL.
    while !tokio::task::spawn_blocking(move || group_members(pid))
        .await
        .unwrap_or_default()
        .is_empty()
    {
        if Instant::now() >= deadline {
            tracing::warn!(
                pid,
                "supervisor: the app's process group outlived the stop grace; sending SIGKILL"
            );
            let _ = killpg(group, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Live processes whose process group is `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.get(stat.rfind(')')? + 2..)?.to_string();
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.first() != Some(&"Z") && f.get(2)? == &pgid.to_string())
                })
                .unwrap_or(false)
        })
        .collect()
}

/// The start time of a live (non-zombie) process, from `/proc/PID/stat`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True when `pid` is still the process that was started at `started`. An
/// unknown start time (0) matches nothing: the pid may have been reused.
pub fn is_same_process(pid: u32, started: u64) -> bool {
    pid != 0 && started != 0 && start_time(pid) == Some(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_logs_rotate_and_the_live_file_keeps_its_writer() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for round in 0..5 {
            writer
                .write_all(format!("round {round}\n").repeat(100).as_bytes())
                .unwrap();
            rotate_if_large(&log, 500, 3).unwrap();
        }
        writer.write_all(b"after\n").unwrap();
        // The writer's next line starts the live file afresh.
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n");
        let kept: Vec<String> = (1..=4)
            .map(|i| {
                std::fs::read_to_string(dir.path().join(format!("app.log.{i}"))).unwrap_or_default()
            })
            .collect();
        assert!(kept[0].starts_with("round 4"), "{:?}", &kept[0][..20]);
        assert!(kept[1].starts_with("round 3"));
        assert!(kept[2].starts_with("round 2"));
        assert!(kept[3].is_empty(), "at most 3 rotated files");
        // Small logs are left alone.
        rotate_if_large(&log, 500, 3).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n");
    }

    #[test]
    fn own_process_has_a_start_time() {
        let me = std::process::id();
        let t = start_time(me).expect("this process is alive");
        assert!(is_same_process(me, t));
        assert!(
            !is_same_process(me, t + 1),
            "a different start time is a different process"
        );
        assert!(!is_same_process(0, 0));
        assert!(
            !is_same_process(me, 0),
            "an unknown start time is never a match"
        );
    }
}
