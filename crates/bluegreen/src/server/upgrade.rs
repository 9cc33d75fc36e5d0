//! Hitless upgrade and restart: a new process (the same binary, or a new
//! one) is started on this process's listening sockets (`LISTEN_FDS`, as
//! systemd passes them), this one hands it the state, it becomes ready,
//! and only then does this one stop accepting, drain and exit. Both accept
//! on the same sockets meanwhile, so no connection is refused; a new
//! process that fails to start or to become ready changes nothing.
//!
//! Order of a handover:
//! 1. systemd hears `RELOADING=1`; the deploy pipeline stops where it is
//!    (its record on disk is what the new process resumes, as after a
//!    crash) and lets go of the app processes, which keep running;
//! 2. the state store is released (this process can no longer write);
//! 3. the new process starts with the sockets, waits for the state lock,
//!    loads the state, listens, and reports `READY=1` on a notify socket
//!    of ours (the same protocol as systemd's);
//! 4. on `READY=1` systemd hears `MAINPID=new`, and this process drains and
//!    exits; on failure (it exits, or is not ready within a minute) it is
//!    stopped, the store and the pipeline are taken back, and the reason
//!    is the answer.

use crate::server::notify::{monotonic_usec, Notifier, UPSTREAM_VAR};
use crate::server::running::Running;
use bluegreen_api::lifecycle::Upgraded;
use bluegreen_pipeline::Pipeline;
use bluegreen_store::StateStore;
use command_fds::{CommandFdExt, FdMapping};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Set for a process started by a handover: it waits for the state lock.
pub const HANDOVER_VAR: &str = "BLUEGREEN_UPGRADE";

/// How long a new process may take to become ready, unless the upgrade
/// says otherwise (`--ready-timeout`).
pub const READY_WAIT: Duration = Duration::from_secs(60);

type Reply = oneshot::Sender<Result<Upgraded, String>>;

/// The handovers of one serving process: at most one at a time.
pub struct Upgrades {
    exe: PathBuf,
    notifier: Arc<Notifier>,
    /// The admin token's variable and value, passed to the new process
    /// (this process removed it from its environment).
    token: (String, String),
    busy: bool,
    /// Cancels the running handover (a stop request came).
    abort: tokio_util::sync::CancellationToken,
    reply: Option<Reply>,
    done_tx: mpsc::Sender<Result<Upgraded, String>>,
    done_rx: mpsc::Receiver<Result<Upgraded, String>>,
}

impl Upgrades {
    /// `exe`: the running binary's path, read at start (a package upgrade
    /// replaces the file at that path).
    pub fn new(exe: PathBuf, notifier: Arc<Notifier>, token: (String, String)) -> Upgrades {
        let (done_tx, done_rx) = mpsc::channel(1);
        Upgrades {
            exe,
            notifier,
            token,
            busy: false,
            abort: tokio_util::sync::CancellationToken::new(),
            reply: None,
            done_tx,
            done_rx,
        }
    }

    /// Starts a handover to `binary` (default: our own path) unless one is
    /// running; `reply` gets the outcome.
    pub async fn start(
        &mut self,
        running: &Running,
        binary: Option<PathBuf>,
        ready_timeout: Option<Duration>,
        reply: Option<Reply>,
    ) {
        if self.busy {
            let why = "an upgrade is already in progress".to_string();
            tracing::warn!("upgrade refused: {why}");
            if let Some(r) = reply {
                let _ = r.send(Err(why));
            }
            return;
        }
        if running.router.paused().is_some() {
            let why =
                "live traffic is paused: resume it first (held requests cannot be handed over)"
                    .to_string();
            tracing::warn!("upgrade refused: {why}");
            if let Some(r) = reply {
                let _ = r.send(Err(why));
            }
            return;
        }
        let fds = match running.sockets.handover() {
            Ok(f) => f,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(format!("cannot pass the sockets on: {e}")));
                }
                return;
            }
        };
        self.abort = tokio_util::sync::CancellationToken::new();
        let handover = Handover {
            exe: binary.unwrap_or_else(|| self.exe.clone()),
            fds,
            store: running.store.clone(),
            pipeline: running.pipeline.clone(),
            router: running.router.clone(),
            notifier: self.notifier.clone(),
            token: self.token.clone(),
            abort: self.abort.clone(),
            ready_wait: ready_timeout.unwrap_or(READY_WAIT),
        };
        self.busy = true;
        self.reply = reply;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            // A panic in the handover must still end it (or every later
            // upgrade and the stop would wait forever).
            let result = tokio::spawn(handover.run())
                .await
                .unwrap_or_else(|e| Err(format!("the handover failed: {e}")));
            let _ = done.send(result).await;
        });
    }

    /// True while a handover runs.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// The next handover's end: true when a new process serves now (this
    /// one must drain and exit). Never resolves while none runs.
    pub async fn outcome(&mut self) -> bool {
        let Some(result) = self.done_rx.recv().await else {
            return std::future::pending().await;
        };
        self.busy = false;
        let ok = result.is_ok();
        match &result {
            Ok(d) => {
                tracing::info!(pid = d.pid, binary = %d.binary, "upgrade: the new process serves; draining and exiting")
            }
            Err(e) => tracing::error!("upgrade failed, still serving here: {e}"),
        }
        if let Some(r) = self.reply.take() {
            let _ = r.send(result);
        }
        ok
    }

    /// At a stop request: a running handover is cancelled (a new process
    /// not ready yet is stopped and everything taken back); one that
    /// already completed has its new process stopped too, since the
    /// service is to stop. True when the apps belong to the new process.
    pub async fn finish(&mut self) -> bool {
        if !self.busy {
            return false;
        }
        self.abort.cancel();
        let Some(result) = self.done_rx.recv().await else {
            return false;
        };
        self.busy = false;
        if let Some(r) = self.reply.take() {
            let _ = r.send(Err("cancelled: the router is stopping".into()));
        }
        match result {
            Ok(done) => {
                tracing::info!(
                    pid = done.pid,
                    "stop during an upgrade: stopping the new process too"
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(done.pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                true
            }
            Err(e) => {
                tracing::info!("stop during an upgrade: {e}");
                false
            }
        }
    }
}

struct Handover {
    exe: PathBuf,
    fds: Vec<(String, OwnedFd)>,
    store: Arc<dyn StateStore>,
    pipeline: Option<Arc<Pipeline>>,
    router: Arc<bluegreen_router::Router>,
    notifier: Arc<Notifier>,
    token: (String, String),
    abort: tokio_util::sync::CancellationToken,
    ready_wait: Duration,
}

impl Handover {
    async fn run(self) -> Result<Upgraded, String> {
        let exe = self.exe.display().to_string();
        runnable(&self.exe)?;
        self.notifier
            .send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        // From here the admin API refuses changes (503): the state is
        // about to belong to the new process. A switch or rollback calls
        // the handover off instead (until the new process is ready).
        self.router.set_handover_abort(Some(self.abort.clone()));
        self.router.set_handing_over(true);
        if let Some(p) = &self.pipeline {
            p.suspend().await;
        }
        let result = match self.store.release() {
            Ok(()) => {
                spawn_and_wait(
                    &self.exe,
                    self.fds,
                    &self.notifier,
                    &self.token,
                    (&self.abort, self.ready_wait),
                )
                .await
            }
            Err(e) => Err(format!("cannot release the state: {e}")),
        };
        self.router.set_handover_abort(None);
        match result {
            Ok(pid) => {
                self.notifier.send(&format!("MAINPID={pid}\nREADY=1"));
                Ok(Upgraded {
                    pid,
                    message: format!(
                        "process {pid} ({exe}) serves now; process {} drains and exits",
                        std::process::id()
                    ),
                    binary: exe,
                })
            }
            Err(why) => {
                let back = take_back(&self.store).await;
                if let Some(p) = &self.pipeline {
                    if let Err(e) = p.resume().await {
                        tracing::error!(error = %e, "upgrade: resuming the pipeline failed");
                    }
                }
                self.notifier.send("READY=1");
                self.router.set_handing_over(false);
                Err(match back {
                    Ok(()) => format!(
                        "{why}; this process ({}) serves on, nothing changed",
                        std::process::id()
                    ),
                    Err(e) => format!("{why}; and the state could not be taken back: {e}"),
                })
            }
        }
    }
}

/// The binary exists and is executable.
fn runnable(exe: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(exe) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("{} is not an executable file", exe.display())),
        Err(e) => Err(format!("{}: {e}", exe.display())),
    }
}

/// Takes the state lock back (a new process that got it and died has
/// released it with its exit).
async fn take_back(store: &Arc<dyn StateStore>) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..100 {
        match store.reacquire() {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// Starts `exe` with our arguments and sockets; its pid once it says
/// `READY=1`.
async fn spawn_and_wait(
    exe: &std::path::Path,
    fds: Vec<(String, OwnedFd)>,
    notifier: &Notifier,
    token: &(String, String),
    (abort, ready_wait): (&tokio_util::sync::CancellationToken, Duration),
) -> Result<u32, String> {
    // The readiness socket lives in a directory only we can enter: nobody
    // else can claim the new process is ready.
    let dir =
        private_dir().map_err(|e| format!("cannot make the readiness socket's directory: {e}"))?;
    let path = dir.join("notify");
    let ready = std::os::unix::net::UnixDatagram::bind(&path)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UnixDatagram::from_std(s)
        })
        .map_err(|e| format!("cannot open the readiness socket: {e}"))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env("NOTIFY_SOCKET", &path)
        .env(&token.0, &token.1)
        .env(UPSTREAM_VAR, notifier.target().unwrap_or_default())
        .env(HANDOVER_VAR, "1")
        .stdin(std::process::Stdio::null());
    let mappings = fds
        .into_iter()
        .enumerate()
        .map(|(i, (_, fd))| FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    cmd.fd_mappings(mappings).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, binary = %exe.display(), "upgrade: new process started; handing over");
    let deadline = tokio::time::sleep(ready_wait);
    tokio::pin!(deadline);
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            // A READY=1 already there wins over an abort that came with it:
            // a process that serves is not stopped.
            biased;
            got = ready.recv(&mut buf) => {
                let Ok(n) = got else { continue };
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok(pid);
                }
            }
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(format!(
                    "the new process {pid} ({}) ended ({status}) before it was ready (its log lines say why)",
                    exe.display()
                ));
            }
            _ = &mut deadline => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!(
                    "the new process {pid} ({}) was not ready within {}; it was stopped",
                    exe.display(),
                    humantime::format_duration(ready_wait)
                ));
            }
            _ = abort.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("the upgrade was called off (a stop request, or a switch or rollback that does not wait for it); the new process {pid} was stopped"));
            }
        }
    }
}

/// A new directory, mode 0700, under the temp dir.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("bluegreen-upgrade-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
