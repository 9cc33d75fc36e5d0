//! The deploy pipeline: deploy → health → smoke → warm → shadow → gate →
//! switch → bake → decommission, each step persisted before and after it
//! runs, so a crash at any point resumes from the step it was in.
//!
//! `Pipeline` is the public face (start, promote, abort, rollback, history,
//! the fence that serialises what decides a side's role); `runner/` executes
//! the steps, one file each; `supervisor` runs app processes; `command` runs
//! hooks; `smoke` runs HTTP checks; with several nodes, `cluster` holds the
//! deploy lock and `watchdog` judges each node's own traffic while a bake's
//! node is gone.
#![forbid(unsafe_code)]

mod cluster;
pub mod command;
pub mod migrate;
pub mod resources;
mod runner;
pub mod smoke;
pub mod supervisor;
mod watchdog;

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
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use supervisor::Supervisor;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why a pipeline request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("deploy #{id} ({version}) is in progress (step {step}); wait for it or run `bluegreen abort`")]
    Busy {
        id: u64,
        version: String,
        step: String,
    },
    /// The side asked for has no running app (the message says what to do).
    #[error("{0}")]
    Stopped(String),
    /// A version or deploy env entry that cannot be used (the message says why).
    #[error("{0}")]
    BadInput(String),
    #[error("no deploy is waiting at the manual gate")]
    NotWaiting,
    #[error("no deploy is in progress")]
    NoDeploy,
    #[error(
        "deploy #{0} is past the bake; the new version is live. Use `bluegreen rollback` instead"
    )]
    TooLateToAbort(u64),
    #[error("no deploy with id {0}")]
    NotFound(u64),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Supervisor(String),
    /// Another deploy activity of this node is starting or ending.
    #[error("{0}")]
    Finishing(String),
    #[error("the deploy lock is held by node {0}: deploys run there (use that node's admin API), or wait until it is done")]
    Elsewhere(String),
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackResult {
    pub message: String,
    /// The instant switch back, when the old side was still up.
    pub switched: Option<SwitchOutcome>,
    /// The re-deploy started, when the old side had been decommissioned.
    pub redeploy: Option<DeployRecord>,
}

/// Controls of the deploy that is running in this process.
struct RunHandle {
    id: u64,
    abort: CancellationToken,
    abort_reason: Mutex<Option<String>>,
    promote: Notify,
    /// The old side's live counters when the deploy started: the baseline's origin.
    baseline_start: Window,
}

/// The deploy pipeline of one router.
pub struct Pipeline {
    router: Arc<Router>,
    store: Arc<dyn StateStore>,
    /// Swapped whole by a reload; a deploy in progress reads it at each step.
    config: arc_swap::ArcSwap<DeployConfig>,
    book: tokio::sync::Mutex<DeployBook>,
    /// Held from the check to the act by everything that decides what a side
    /// is for: manual switches and rollbacks, starting a deploy, stopping a
    /// side. Without it a switch could land between a deploy's "target is
    /// idle" and its start, or between a decommission's "not live" and the
    /// stop. Status reads never take it. Order: fence, then book.
    fence: tokio::sync::Mutex<()>,
    run: Mutex<Option<Arc<RunHandle>>>,
    supervisor: Option<Arc<Supervisor>>,
    decommission_timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled to suspend the running deploy for a handover to a new
    /// process (it stops where it is, as at a crash; the new one resumes).
    suspend: Mutex<CancellationToken>,
    /// The task running the current deploy, awaited by `suspend`.
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// With a shared store: the deploy lock and the other nodes' book.
    cluster: Option<Arc<dyn bluegreen_store::Cluster>>,
    /// Stops the running deploy where it is (suspend, or a lost lock).
    run_stop: Mutex<CancellationToken>,
    /// The run has ended and is giving its lock back: a lock that is gone
    /// now was released, not lost.
    finishing: std::sync::atomic::AtomicBool,
    /// The supervised apps' CPU, memory, descriptors and restarts per side
    /// (started with the supervisor).
    resources: std::sync::OnceLock<Arc<resources::Resources>>,
    /// Each side's counters every few seconds over the last
    /// `deploy.bake.baseline`: a deploy's baseline reaches back that far,
    /// not only over the seconds the deploy itself took.
    recent: Mutex<bluegreen_core::Sides<std::collections::VecDeque<(u64, Window)>>>,
    keeping: std::sync::atomic::AtomicBool,
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
        let book: DeployBook =
            cluster::normalized(load_json(store.as_ref(), DEPLOYS_KEY)?.unwrap_or_default());
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
    fn spawn_run(self: &Arc<Self>, handle: Arc<RunHandle>, lock: cluster::DeployLock) {
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
    fn keep_recent(self: &Arc<Self>) {
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
    fn baseline_origin(&self, side: Side) -> Window {
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

    fn new_handle(&self, id: u64, from: Side) -> Arc<RunHandle> {
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

    fn handle(&self) -> Option<Arc<RunHandle>> {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts a deploy of `version` to the idle side. Refused while another runs.
    pub async fn deploy(
        self: &Arc<Self>,
        version: &str,
        options: DeployOptions,
    ) -> Result<DeployRecord, PipelineError> {
        // Versions become paths and arguments; env reaches app processes.
        bluegreen_core::input::version(version).map_err(PipelineError::BadInput)?;
        for (k, v) in &options.env {
            bluegreen_core::input::env_var(k, v).map_err(PipelineError::BadInput)?;
        }
        // In a cluster: this node takes the deploy lock (held by the run
        // from here on), and the book as the store has it (another node
        // may have deployed since).
        if self.cluster.is_some() && self.runs_here() {
            let book = self.book.lock().await;
            return Err(match book.current.as_ref().filter(|d| !d.is_finished()) {
                Some(d) => busy(d),
                None => PipelineError::Finishing(
                    "the previous deploy is finishing on this node; try again in a moment".into(),
                ),
            });
        }
        let lock = self.take_lock().await?;
        let _fence = self.fence.lock().await;
        let mut book = self.book.lock().await;
        // On a refusal below, the lock's drop gives it back.
        if let Some(fresh) = self.fresh_book().await? {
            *book = fresh;
        }
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(busy(d));
        }
        let from = self.router.live();
        let id = book.next_id;
        book.next_id += 1;
        let previous = book.sides[from].version.clone();
        let record = DeployRecord::new(id, version.to_string(), from, previous, options, now_ms());
        // The target side is about to be replaced: a decommission scheduled for it is moot.
        if book
            .pending_decommission
            .as_ref()
            .is_some_and(|p| p.side == record.target)
        {
            book.pending_decommission = None;
        }
        book.archive_current();
        book.current = Some(record.clone());
        self.persist(&book).await?;
        drop(book);
        tracing::info!(id, %version, target = %record.target, "deploy started");
        // Nobody may reach the target before its gate: sessions kept there
        // and a weighted share toward it end now.
        self.router.clear_pin(record.target).await;
        if self.router.split().is_some_and(|s| s.side == record.target) {
            let _ = self.router.set_weight(record.target, 0, true).await;
        }
        let handle = self.new_handle(id, from);
        self.spawn_run(handle, lock);
        Ok(record)
    }

    /// Lets a deploy waiting at the manual gate continue.
    pub async fn promote(&self) -> Result<DeployRecord, PipelineError> {
        let book = self.book.lock().await;
        let d = book
            .current
            .as_ref()
            .filter(|d| !d.is_finished())
            .ok_or(PipelineError::NotWaiting)?;
        // At the manual gate, or held by a bake or canary share that saw
        // too little traffic (`on_inconclusive = "hold"`).
        if d.step(Step::Gate).state != StepState::Running && d.held.is_none() {
            return Err(PipelineError::NotWaiting);
        }
        let handle = match self.handle().filter(|h| h.id == d.id) {
            Some(h) => h,
            None => return Err(self.elsewhere_or(PipelineError::NotWaiting)),
        };
        handle.promote.notify_one();
        Ok(d.clone())
    }

    /// Stops the running deploy. Before the switch nothing live changes;
    /// during the bake, traffic goes back to the old side.
    pub async fn abort(&self, reason: String) -> Result<DeployRecord, PipelineError> {
        let book = self.book.lock().await;
        let d = book
            .current
            .as_ref()
            .filter(|d| !d.is_finished())
            .ok_or(PipelineError::NoDeploy)?;
        if d.next_step() == Some(Step::Decommission) {
            return Err(PipelineError::TooLateToAbort(d.id));
        }
        let handle = match self.handle().filter(|h| h.id == d.id) {
            Some(h) => h,
            None => return Err(self.elsewhere_or(PipelineError::NoDeploy)),
        };
        *handle
            .abort_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
        handle.abort.cancel();
        Ok(d.clone())
    }

    /// The deploy in progress (or the last one, finished), if any.
    pub async fn current(&self) -> Option<DeployRecord> {
        let book = self.book.lock().await;
        book.current
            .clone()
            .or_else(|| book.history.last().cloned())
    }

    /// One deploy by id.
    pub async fn get(&self, id: u64) -> Result<DeployRecord, PipelineError> {
        self.book
            .lock()
            .await
            .find(id)
            .cloned()
            .ok_or(PipelineError::NotFound(id))
    }

    /// Every deploy kept, oldest first (the current one last).
    pub async fn history(&self) -> Vec<DeployRecord> {
        let book = self.book.lock().await;
        book.history
            .iter()
            .chain(book.current.iter())
            .cloned()
            .collect()
    }

    /// What each side runs.
    pub async fn sides(&self) -> bluegreen_core::Sides<bluegreen_core::deploy::SideRelease> {
        self.book.lock().await.sides.clone()
    }

    /// A manual switch, refused while a deploy runs (it owns the switch).
    /// In a cluster it also takes the deploy lock for its length, so it
    /// cannot land between another node's decommission check and its stop.
    pub async fn switch(&self, req: SwitchRequest) -> Result<SwitchOutcome, PipelineError> {
        if let Some(refused) = self.busy_here().await {
            return Err(refused);
        }
        let lock = match self.take_lock().await {
            Ok(l) => l,
            Err(e) => return Err(self.contended(e).await),
        };
        let result = self.switch_locked(req).await;
        lock.release().await;
        result
    }

    async fn switch_locked(&self, req: SwitchRequest) -> Result<SwitchOutcome, PipelineError> {
        // Read before the book lock: status reads never wait on etcd.
        let fresh = self.fresh_book().await?;
        let _fence = self.fence.lock().await;
        let mut book = self.book.lock().await;
        if let Some(fresh) = fresh {
            *book = fresh;
        }
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(busy(d));
        }
        let to = req.to;
        if let Some(refused) = stopped(&book, to, self.router.live()) {
            return Err(refused);
        }
        // A side still running a release from before the last contract
        // would meet a schema it cannot use.
        let onto = RollbackPlan::Switch {
            side: to,
            version: book.sides[to].version.clone(),
        };
        if let RollbackPlan::Nothing(why) = rollback::past_contract(&book, onto, req.forced) {
            return Err(PipelineError::Stopped(why));
        }
        drop(book);
        let outcome = self.router.switch(req).await?;
        self.cancel_decommission_of(to).await?;
        Ok(outcome)
    }

    /// Back to the side live before the last switch: instant while it is still
    /// up and what it runs was good; a re-deploy through the pipeline once it
    /// was decommissioned. Never onto a version a deploy rejected: then the
    /// good release before the live one, or a refusal that says why
    /// (`core::rollback`). With `to_version`, that version on the idle side.
    pub async fn rollback(
        self: &Arc<Self>,
        forced: bool,
        to_version: Option<String>,
        actor: String,
        reason: String,
    ) -> Result<RollbackResult, PipelineError> {
        if let Some(v) = &to_version {
            bluegreen_core::input::version(v).map_err(PipelineError::BadInput)?;
        }
        // In a cluster, under the deploy lock from the plan to the switch
        // (as a manual switch), with the book as the store has it.
        if let Some(refused) = self.busy_here().await {
            return Err(refused);
        }
        let lock = match self.take_lock().await {
            Ok(l) => l,
            Err(e) => return Err(self.contended(e).await),
        };
        self.rollback_locked(forced, to_version, actor, reason, lock)
            .await
    }

    async fn rollback_locked(
        self: &Arc<Self>,
        forced: bool,
        to_version: Option<String>,
        actor: String,
        reason: String,
        lock: cluster::DeployLock,
    ) -> Result<RollbackResult, PipelineError> {
        let fresh = self.fresh_book().await?;
        let fence = self.fence.lock().await;
        let mut book = self.book.lock().await;
        if let Some(fresh) = fresh {
            *book = fresh;
        }
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(busy(d));
        }
        let live = self.router.live();
        let plan = match &to_version {
            Some(v) => rollback::plan_to(&book, live, v, forced),
            None => {
                let target = self
                    .router
                    .rollback_target()
                    .await
                    .map_err(PipelineError::Switch)?;
                rollback::plan(&book, live, target)
            }
        };
        let plan = rollback::past_contract(&book, plan, forced);
        drop(book);
        match plan {
            RollbackPlan::Nothing(why) => Err(PipelineError::Stopped(why)),
            RollbackPlan::AlreadyLive { version } => Err(PipelineError::Stopped(format!(
                "{version} is already live on {live}"
            ))),
            RollbackPlan::Redeploy { version, why, .. } => {
                // The deploy takes the fence (and the lock) itself and
                // checks again.
                drop(fence);
                lock.release().await;
                let why = format!("rollback: {why}");
                let record = self
                    .deploy(
                        &version,
                        DeployOptions {
                            actor,
                            reason: why.clone(),
                            ..DeployOptions::default()
                        },
                    )
                    .await?;
                Ok(RollbackResult {
                    message: format!("{why} (deploy #{})", record.id),
                    switched: None,
                    redeploy: Some(record),
                })
            }
            RollbackPlan::Switch { side, version } => {
                let outcome = self
                    .router
                    .switch(SwitchRequest {
                        to: side,
                        kind: SwitchKind::Rollback,
                        forced,
                        actor,
                        reason,
                    })
                    .await?;
                self.cancel_decommission_of(side).await?;
                drop(fence);
                lock.release().await;
                let running = version.map(|v| format!(" ({v})")).unwrap_or_default();
                Ok(RollbackResult {
                    message: format!("{}{running}", outcome.message),
                    switched: Some(outcome),
                    redeploy: None,
                })
            }
        }
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

    /// The side is live again: a decommission scheduled for it must not happen.
    async fn cancel_decommission_of(&self, side: Side) -> Result<(), PipelineError> {
        let mut book = self.book.lock().await;
        if book
            .pending_decommission
            .as_ref()
            .is_some_and(|p| p.side == side)
        {
            book.pending_decommission = None;
            self.persist(&book).await?;
            tracing::info!(%side, "scheduled decommission cancelled: the side is live again");
        }
        Ok(())
    }

    /// What `rollback` would do now, in words (for `status`): the same
    /// plan as `rollback` itself makes.
    pub async fn rollback_preview(&self) -> Option<String> {
        let target = self.router.rollback_target().await.ok()?;
        let book = self.book.lock().await;
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Some(format!(
                "refused while deploy #{} runs (abort it, or let its bake roll it back)",
                d.id
            ));
        }
        let plan = rollback::plan(&book, self.router.live(), target);
        Some(match rollback::past_contract(&book, plan, false) {
            RollbackPlan::Switch { side, version } => format!(
                "an instant switch to {side}{}, still running",
                version.map(|v| format!(" ({v})")).unwrap_or_default()
            ),
            RollbackPlan::Redeploy { side, version, why } => {
                format!("re-deploys {version} to {side} ({why})")
            }
            RollbackPlan::AlreadyLive { version } => format!("{version} is already live"),
            // The plan's reason already says "nothing to roll back to".
            RollbackPlan::Nothing(why) if why.starts_with("nothing to roll back to") => why,
            RollbackPlan::Nothing(why) => format!("nothing to roll back to: {why}"),
        })
    }

    /// `bluegreen migrate status`: every migration file and what the
    /// database's tracking table says of it, and the last contract.
    pub async fn migrations(&self) -> Result<serde_json::Value, PipelineError> {
        let config = self.config();
        let Some(m) = config.migrations.as_ref() else {
            return Err(PipelineError::BadInput(
                "no [deploy.migrations] in the config".into(),
            ));
        };
        let status = migrate::status(m, &config.workdir)
            .await
            .map_err(PipelineError::Stopped)?;
        let contracted = self.book.lock().await.contracted.clone();
        let mut v = serde_json::to_value(status).unwrap_or_default();
        v["contracted"] = serde_json::to_value(contracted).unwrap_or_default();
        Ok(v)
    }

    /// `bluegreen migrate contract`: the live release's contract files now.
    pub async fn contract(
        self: &Arc<Self>,
        force: bool,
        actor: String,
    ) -> Result<String, PipelineError> {
        if let Some(refused) = self.busy_here().await {
            return Err(refused);
        }
        let lock = self.take_lock().await?;
        let result = runner::contract::by_hand(self, force, actor).await;
        lock.release().await;
        result
    }

    /// An accepted shadow difference counts where the deploy's run is
    /// judged: in a cluster, on the node holding the deploy lock.
    pub fn accept_here(&self) -> Result<(), PipelineError> {
        match self.held_elsewhere() {
            Some(node) => Err(PipelineError::Elsewhere(node)),
            None => Ok(()),
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
    async fn contended(&self, e: PipelineError) -> PipelineError {
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
    async fn busy_here(&self) -> Option<PipelineError> {
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
    fn elsewhere_or(&self, otherwise: PipelineError) -> PipelineError {
        match self.held_elsewhere() {
            Some(node) => PipelineError::Elsewhere(node),
            None => otherwise,
        }
    }

    fn arm_decommission(self: &Arc<Self>, pending: PendingDecommission) {
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

    async fn persist(&self, book: &DeployBook) -> Result<(), StoreError> {
        let store = self.store.clone();
        let copy = book.clone();
        tokio::task::spawn_blocking(move || save_json(store.as_ref(), DEPLOYS_KEY, &copy))
            .await
            .expect("persist task")
    }

    /// A rollback switch, forced: the old side was serving moments ago and a
    /// breach must not wait for another analysis.
    async fn switch_back(
        &self,
        d: &DeployRecord,
        kind: SwitchKind,
        reason: &str,
    ) -> Result<SwitchOutcome, SwitchError> {
        self.router
            .switch(SwitchRequest {
                to: d.from,
                kind,
                forced: true,
                actor: format!("deploy #{}", d.id),
                reason: reason.to_string(),
            })
            .await
    }
}

/// A manual switch to a side whose app was stopped would send live traffic
/// to nothing: refused, pointing at rollback (which re-deploys it).
fn stopped(book: &DeployBook, to: Side, live: Side) -> Option<PipelineError> {
    let r = &book.sides[to];
    (to != live && !r.running && r.version.is_some()).then(|| {
        PipelineError::Stopped(format!(
            "{to} ({}) was decommissioned: its app is stopped; use rollback or deploy to bring it back",
            r.version.as_deref().unwrap_or("?")
        ))
    })
}

fn busy(d: &DeployRecord) -> PipelineError {
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
