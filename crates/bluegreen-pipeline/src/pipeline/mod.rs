//! `Pipeline`: the public face of the deploy pipeline and what it holds
//! (the book, the fence, the running deploy's handle, the baselines);
//! starting, promoting and aborting deploys are in `deploys`, switches and
//! rollbacks in `switching`.

mod deploys;
mod switching;

use crate::routing::Routing;
use crate::supervisor::Supervisor;
use crate::{cluster, migrate, resources, runner, watchdog, PipelineError, RollbackResult};
use bluegreen_core::bake::Window;
use bluegreen_core::config::deploy::{DeployConfig, DeployMethod};
use bluegreen_core::deploy::{
    DeployBook, DeployOptions, DeployRecord, Outcome, PendingDecommission, Step, StepState,
};
use bluegreen_core::rollback::{self, RollbackPlan};
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_router::{Router, SwitchError, SwitchOutcome};
use bluegreen_store::{load_json, save_json, StateStore, StoreError, DEPLOYS_KEY};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Controls of the deploy that is running in this process.
pub(crate) struct RunHandle {
    pub(crate) id: u64,
    pub(crate) abort: CancellationToken,
    pub(crate) abort_reason: Mutex<Option<String>>,
    pub(crate) promote: Notify,
    /// The old side's live counters when the deploy started: the baseline's origin.
    pub(crate) baseline_start: Window,
}

/// The deploy pipeline of one router.
pub struct Pipeline {
    pub(crate) router: Arc<dyn Routing>,
    pub(crate) store: Arc<dyn StateStore>,
    /// Swapped whole by a reload; a deploy in progress reads it at each step.
    pub(crate) config: arc_swap::ArcSwap<DeployConfig>,
    pub(crate) book: tokio::sync::Mutex<DeployBook>,
    /// Held from the check to the act by everything that decides what a side
    /// is for: manual switches and rollbacks, starting a deploy, stopping a
    /// side. Without it a switch could land between a deploy's "target is
    /// idle" and its start, or between a decommission's "not live" and the
    /// stop. Status reads never take it. Order: fence, then book.
    pub(crate) fence: tokio::sync::Mutex<()>,
    pub(crate) run: Mutex<Option<Arc<RunHandle>>>,
    pub(crate) supervisor: Option<Arc<Supervisor>>,
    pub(crate) decommission_timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled to suspend the running deploy for a handover to a new
    /// process (it stops where it is, as at a crash; the new one resumes).
    pub(crate) suspend: Mutex<CancellationToken>,
    /// The task running the current deploy, awaited by `suspend`.
    pub(crate) running: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// With a shared store: the deploy lock and the other nodes' book.
    pub(crate) cluster: Option<Arc<dyn bluegreen_store::Cluster>>,
    /// Stops the running deploy where it is (suspend, or a lost lock).
    pub(crate) run_stop: Mutex<CancellationToken>,
    /// The run has ended and is giving its lock back: a lock that is gone
    /// now was released, not lost.
    pub(crate) finishing: std::sync::atomic::AtomicBool,
    /// The supervised apps' CPU, memory, descriptors and restarts per side
    /// (started with the supervisor).
    pub(crate) resources: std::sync::OnceLock<Arc<resources::Resources>>,
    /// Each side's counters every few seconds over the last
    /// `deploy.bake.baseline`: a deploy's baseline reaches back that far,
    /// not only over the seconds the deploy itself took.
    pub(crate) recent: Mutex<bluegreen_core::Sides<std::collections::VecDeque<(u64, Window)>>>,
    pub(crate) keeping: std::sync::atomic::AtomicBool,
}

/// How often the counters are kept for baselines.
const KEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Path of this executable, for the `{bluegreen}` placeholder.
pub(crate) fn exe() -> &'static str {
    static EXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "bluegreen".into())
    })
}

impl Pipeline {
    /// Loads the deploy book and prepares the supervisor (if configured).
    /// Nothing runs until [`Pipeline::start_up`].
    pub fn new(
        router: Arc<Router>,
        store: Arc<dyn StateStore>,
        config: DeployConfig,
        state_dir: &Path,
    ) -> Result<Arc<Pipeline>, PipelineError> {
        Pipeline::with_routing(Arc::new(router), store, config, state_dir)
    }

    /// [`Pipeline::new`] over anything that routes (the tests' fakes).
    pub fn with_routing(
        router: Arc<dyn Routing>,
        store: Arc<dyn StateStore>,
        config: DeployConfig,
        state_dir: &Path,
    ) -> Result<Arc<Pipeline>, PipelineError> {
        let book: DeployBook =
            crate::shared::normalized(load_json(store.as_ref(), DEPLOYS_KEY)?.unwrap_or_default());
        let supervisor = match &config.method {
            DeployMethod::Supervisor(s) => Some(
                Supervisor::new(s.clone(), &config.workdir, state_dir, store.clone())
                    .map_err(|e| PipelineError::Supervisor(e.to_string()))?,
            ),
            DeployMethod::Hooks { .. } => None,
        };
        Ok(Arc::new(Pipeline {
            router,
            cluster: store.cluster(),
            run_stop: Mutex::new(CancellationToken::new()),
            store,
            config: arc_swap::ArcSwap::from_pointee(config),
            book: tokio::sync::Mutex::new(book),
            fence: tokio::sync::Mutex::new(()),
            run: Mutex::new(None),
            supervisor,
            decommission_timer: Mutex::new(None),
            suspend: Mutex::new(CancellationToken::new()),
            running: Mutex::new(None),
            finishing: Default::default(),
            resources: Default::default(),
            recent: Default::default(),
            keeping: Default::default(),
        }))
    }

    /// Re-adopts app processes, resumes an interrupted deploy and re-arms a
    /// pending decommission.
    pub async fn start_up(self: &Arc<Self>) -> Result<(), PipelineError> {
        self.keep_recent();
        if let Some(s) = &self.supervisor {
            s.adopt()
                .await
                .map_err(|e| PipelineError::Supervisor(e.to_string()))?;
            let _ = self
                .resources
                .set(resources::Resources::start(s.clone(), self.router.clone()));
        }
        if self.cluster.is_some() {
            // Deploys and decommissions run where the lock is: taken over
            // from the shared book, not resumed on every node at once.
            self.spawn_follow();
            if let Some(cluster) = self.cluster.clone() {
                let stop = self
                    .suspend
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                watchdog::spawn(self, cluster, stop);
            }
            return Ok(());
        }
        let book = self.book.lock().await;
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            tracing::info!(id = d.id, version = %d.version, step = ?d.next_step(), "resuming the interrupted deploy");
            let handle = self.new_handle(d.id, d.from);
            self.spawn_run(handle, cluster::DeployLock::none());
        }
        if let Some(p) = book.pending_decommission.clone() {
            self.arm_decommission(p);
        }
        Ok(())
    }

    /// The supervised apps' resources per side, when the supervisor runs them.
    pub fn resources(&self) -> Option<&Arc<resources::Resources>> {
        self.resources.get()
    }

    /// The deploy settings in use (the last reloaded).
    pub fn config(&self) -> Arc<DeployConfig> {
        self.config.load_full()
    }

    /// New deploy settings (a reload); the method stays (it needs a new process).
    pub fn set_config(&self, config: DeployConfig) {
        self.config.store(Arc::new(config));
    }

    /// Runs a deploy until it ends (then gives `lock` back) or the pipeline
    /// is suspended or loses the lock (then keeps it: the lease decides).
    pub(crate) fn spawn_run(self: &Arc<Self>, handle: Arc<RunHandle>, lock: cluster::DeployLock) {
        let suspend = self
            .suspend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let run = runner::run(self.clone(), handle);
        let me = self.clone();
        let stop = suspend.child_token();
        *self.run_stop.lock().unwrap_or_else(|p| p.into_inner()) = stop.clone();
        self.finishing
            .store(false, std::sync::atomic::Ordering::Release);
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = run => {
                    me.finishing.store(true, std::sync::atomic::Ordering::Release);
                    lock.release().await;
                }
                _ = stop.cancelled() => {
                    lock.keep();
                    tracing::info!("deploy stopped where it is (a handover to a new process, or the deploy lock lost)");
                }
            }
        });
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Stops the running deploy and the decommission timer where they are,
    /// writing nothing: the state on disk is what a new process resumes
    /// from (a hitless upgrade), exactly as after a crash.
    pub async fn suspend(&self) {
        // The deploy first, and its task awaited: no step may start apps
        // or monitors after the supervisor lets go of them.
        self.suspend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
        let task = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        let timer = self
            .decommission_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = timer {
            h.abort();
            let _ = h.await;
        }
        if let Some(s) = &self.supervisor {
            s.detach().await;
        }
    }

    /// Picks up again after a handover that did not happen: the apps are
    /// adopted again and the deploy resumes from its record.
    pub async fn resume(self: &Arc<Self>) -> Result<(), PipelineError> {
        *self.suspend.lock().unwrap_or_else(|p| p.into_inner()) = CancellationToken::new();
        // In a cluster, the suspended run kept the deploy lock for the new
        // process: given back now, so this node's follower (or another
        // node) takes the deploy over again, and switches are not refused
        // as "finishing on this node".
        self.release_kept_lock().await;
        self.start_up().await
    }

    /// Keeps each side's counters every [`KEEP_EVERY`], as far back as
    /// `deploy.bake.baseline` (once per pipeline; the task ends with it).
    pub(crate) fn keep_recent(self: &Arc<Self>) {
        if self.keeping.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(p) = weak.upgrade() else { return };
                let keep = p.config().bake.baseline.as_millis() as u64;
                let now = now_ms();
                let windows = Side::ALL.map(|s| p.router.live_window(s));
                let mut recent = p.recent.lock().unwrap_or_else(|e| e.into_inner());
                for (side, w) in Side::ALL.into_iter().zip(windows) {
                    let q = &mut recent[side];
                    q.push_back((now, w));
                    while q.front().is_some_and(|(at, _)| at + keep < now) {
                        q.pop_front();
                    }
                }
            }
        });
    }

    /// The counters of `side` as they were `deploy.bake.baseline` ago (or
    /// as far back as kept): where a deploy's baseline starts.
    pub(crate) fn baseline_origin(&self, side: Side) -> Window {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent[side]
            .front()
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| self.router.live_window(side))
    }

    /// How much the old side's error rate wandered over the kept counters,
    /// in slices of `every` (the bake's window): `counts::dispersion`.
    pub(crate) fn baseline_dispersion(&self, side: Side, every: std::time::Duration) -> f64 {
        let every = every.as_millis() as u64;
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut slices = Vec::new();
        let mut from: Option<&(u64, Window)> = None;
        for kept in &recent[side] {
            match from {
                Some(f) if kept.0 < f.0 + every => {}
                Some(f) => {
                    let w = kept.1.since(&f.1);
                    slices.push((w.errors, w.requests));
                    from = Some(kept);
                }
                None => from = Some(kept),
            }
        }
        bluegreen_core::counts::dispersion(&slices)
    }

    pub(crate) fn new_handle(&self, id: u64, from: Side) -> Arc<RunHandle> {
        let handle = Arc::new(RunHandle {
            id,
            abort: CancellationToken::new(),
            abort_reason: Mutex::new(None),
            promote: Notify::new(),
            baseline_start: self.baseline_origin(from),
        });
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.clone());
        handle
    }

    pub(crate) fn handle(&self) -> Option<Arc<RunHandle>> {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Called at `serve` shutdown: stops app processes if asked to.
    pub async fn shutdown(&self, stop_apps: bool) {
        if let Some(h) = self
            .decommission_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        if stop_apps {
            if let Some(s) = &self.supervisor {
                s.stop_all().await;
            }
        }
    }

    /// A line in the running deploy's log (an operator's decision).
    pub async fn record(&self, text: String) {
        let mut book = self.book.lock().await;
        let Some(d) = book.current.as_mut().filter(|d| !d.is_finished()) else {
            return;
        };
        d.log(text, now_ms());
        if let Err(e) = self.persist(&book).await {
            tracing::warn!(error = %e, "the deploy log line was not saved");
        }
    }

    /// A switch or rollback that found the deploy lock taken on another
    /// node when no deploy runs: that node's switch or rollback holds it for
    /// a moment. A plain conflict (409 `conflict`), not "deploys run there";
    /// a deploy that does run there is named as such.
    pub(crate) async fn contended(&self, e: PipelineError) -> PipelineError {
        let PipelineError::Elsewhere(node) = e else {
            return e;
        };
        let deploying = self
            .book
            .lock()
            .await
            .current
            .as_ref()
            .is_some_and(|d| !d.is_finished());
        if deploying {
            return PipelineError::Elsewhere(node);
        }
        PipelineError::Switch(bluegreen_router::SwitchError::Conflict(format!(
            "another node ({node}) is changing the live side right now (a switch, rollback or decommission holds the cluster's lock); look at `bluegreen status` and retry if still needed"
        )))
    }

    /// A deploy running on this node owns the switch: said with its step
    /// (before the deploy lock, which it holds, would say less).
    pub(crate) async fn busy_here(&self) -> Option<PipelineError> {
        if !self.runs_here() {
            return None;
        }
        let book = self.book.lock().await;
        book.current.as_ref().filter(|d| !d.is_finished()).map(busy)
    }

    /// Stops the running deploy where it is, writing nothing.
    pub(crate) fn stop_run(&self) {
        self.run_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
    }

    /// The deploy runs on another node: say which, rather than `otherwise`.
    pub(crate) fn elsewhere_or(&self, otherwise: PipelineError) -> PipelineError {
        match self.held_elsewhere() {
            Some(node) => PipelineError::Elsewhere(node),
            None => otherwise,
        }
    }

    pub(crate) fn arm_decommission(self: &Arc<Self>, pending: PendingDecommission) {
        if self.cluster.is_some() {
            // Run by whichever node takes the lock when it comes due.
            return;
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            let wait = pending.at_ms.saturating_sub(now_ms());
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            if let Err(e) = runner::scheduled_decommission(&me, &pending).await {
                tracing::error!(side = %pending.side, error = %e, "scheduled decommission failed");
            }
        });
        if let Some(old) = self
            .decommission_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    pub(crate) async fn persist(&self, book: &DeployBook) -> Result<(), StoreError> {
        let store = self.store.clone();
        let copy = book.clone();
        tokio::task::spawn_blocking(move || save_json(store.as_ref(), DEPLOYS_KEY, &copy))
            .await
            .expect("persist task")
    }
}

pub(crate) fn busy(d: &DeployRecord) -> PipelineError {
    PipelineError::Busy {
        id: d.id,
        version: d.version.clone(),
        step: d
            .next_step()
            .map(|s| s.as_str())
            .unwrap_or("finishing")
            .to_string(),
    }
}

/// Exit-code class of a finished deploy, for the CLI.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Running => "running",
        Outcome::Succeeded => "succeeded",
        Outcome::RolledBack => "rolled_back",
        Outcome::Aborted => "aborted",
        Outcome::Failed => "failed",
    }
}
