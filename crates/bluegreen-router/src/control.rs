//! The control side of the router: switch, rollback and status. Switches are
//! serialised by one lock around the persisted state; each one persists
//! first, then swaps the routing snapshot in one atomic store, then drains
//! the old side in the background.

use crate::downstream::{ClientCount, ClientGauge};
use crate::events::{Events, Series};
use crate::listener::ListenerKind;
use crate::request::headers::RequestIds;
use crate::settings::ProxySettings;
use crate::snapshot::{Epoch, Snapshot};
use crate::status::{DrainStatus, SideStatus, Status, UpstreamStatus};
use crate::taps::recorder::{RecordOptions, RecordStatus, Recorder};
use crate::taps::shadow::{Shadow, ShadowOptions};
use crate::upstream::pool::Pool;
use arc_swap::ArcSwap;
use bluegreen_core::config::Config;
use bluegreen_core::health::Health;
use bluegreen_core::state::{RouterState, SwitchKind, SwitchRecord, SwitchRequest};
use bluegreen_core::{Side, Sides};
use bluegreen_store::{load_router, save_router, StateStore, StoreError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The router: routing snapshot, upstream client and the persisted state.
pub struct Router {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) ids: RequestIds,
    /// Upgraded connections, which hyper no longer tracks.
    pub(crate) tunnels: TaskTracker,
    /// Cancelled when the router stops; cuts what is still open.
    pub(crate) shutdown: CancellationToken,
    config: Arc<Config>,
    store: Arc<dyn StateStore>,
    /// The persisted state; holding this lock is what serialises switches.
    state: AsyncMutex<RouterState>,
    drain_deadlines: Mutex<Sides<Option<Instant>>>,
    listeners: Mutex<BTreeMap<String, SocketAddr>>,
    /// The running or last shadow run, kept for its report.
    last_shadow: Mutex<Option<Arc<Shadow>>>,
    /// State changes, for the event stream.
    pub events: Events,
    /// Per-second live traffic of both sides, for charts.
    pub series: Series,
    /// Switches since this process started, by kind (for metrics).
    switch_counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Open client connections per listener (live, preview).
    pub(crate) clients: [Arc<ClientGauge>; 2],
}

fn already_recording(r: &Recorder) -> String {
    format!("already recording to {}; stop it first", r.path.display())
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("config: {0}")]
    Config(String),
}

/// Why a switch was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwitchError {
    #[error("refusing to switch to {side}: no healthy upstream ({detail}); fix it or pass force to override")]
    Unhealthy { side: Side, detail: String },
    #[error("nothing to roll back to: no switch has been recorded yet")]
    NoHistory,
    #[error("could not persist the switch, live side unchanged: {0}")]
    Persist(String),
}

/// Result of a switch request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SwitchOutcome {
    /// False when the requested side was already live.
    pub changed: bool,
    pub live: Side,
    pub generation: u64,
    /// The record written, when something changed.
    pub record: Option<SwitchRecord>,
    pub message: String,
}

impl Router {
    /// Loads (or initialises) the persisted state and builds the first
    /// snapshot. Nothing is listening yet.
    pub fn new(config: Config, store: Arc<dyn StateStore>) -> Result<Arc<Router>, RouterError> {
        // 1. The state decides which side is live; a fresh store starts with
        //    the configured side and writes it down at once.
        let state = match load_router(store.as_ref())? {
            Some(s) => s,
            None => {
                let s = RouterState::initial(config.switch.initial_live);
                save_router(store.as_ref(), &s)?;
                s
            }
        };

        // 2. Pools and epochs, then the first snapshot.
        let h = &config.health;
        let pools = Sides {
            blue: pool(
                &config,
                Side::Blue,
                h.healthy_threshold,
                h.unhealthy_threshold,
            )?,
            green: pool(
                &config,
                Side::Green,
                h.healthy_threshold,
                h.unhealthy_threshold,
            )?,
        };
        let snapshot = Snapshot {
            generation: state.generation,
            live: state.live,
            pools,
            epochs: Sides::from_fn(|_| Epoch::new()),
            recorder: None,
            shadow: None,
            settings: Arc::new(ProxySettings::from_config(&config.proxy)),
        };

        Ok(Arc::new(Router {
            snapshot: ArcSwap::from_pointee(snapshot),
            ids: RequestIds::new(),
            tunnels: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            config: Arc::new(config),
            store,
            state: AsyncMutex::new(state),
            drain_deadlines: Mutex::new(Sides::default()),
            listeners: Mutex::new(BTreeMap::new()),
            last_shadow: Mutex::new(None),
            events: Events::default(),
            series: Series::default(),
            switch_counts: Mutex::new(BTreeMap::new()),
            clients: Default::default(),
        }))
    }

    /// The validated config the router runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current snapshot (for health checks and status).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Side currently live.
    pub fn live(&self) -> Side {
        self.snapshot.load().live
    }

    /// Records a bound listener address for status.
    pub fn set_listener(&self, name: &str, addr: SocketAddr) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), addr);
    }

    /// Token cancelled when the router shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits for upgraded connections to finish, up to `grace`; then cuts them.
    pub async fn close_tunnels(&self, grace: Duration) -> usize {
        self.tunnels.close();
        let open = self.tunnels.len();
        if tokio::time::timeout(grace, self.tunnels.wait())
            .await
            .is_err()
        {
            self.shutdown.cancel();
            self.tunnels.wait().await;
        }
        self.shutdown.cancel();
        open
    }

    /// Switches live traffic to `req.to`. Persists, swaps, then drains.
    pub async fn switch(
        self: &Arc<Self>,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, SwitchError> {
        let mut state = self.state.lock().await;
        self.switch_locked(&mut state, req).await
    }

    /// Switches back to the side that was live before the last switch.
    pub async fn rollback(
        self: &Arc<Self>,
        forced: bool,
        actor: String,
        reason: String,
    ) -> Result<SwitchOutcome, SwitchError> {
        let mut state = self.state.lock().await;
        let to = state
            .rollback_target()
            .map_err(|_| SwitchError::NoHistory)?;
        let req = SwitchRequest {
            to,
            kind: SwitchKind::Rollback,
            forced,
            actor,
            reason,
        };
        self.switch_locked(&mut state, req).await
    }

    async fn switch_locked(
        self: &Arc<Self>,
        state: &mut RouterState,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, SwitchError> {
        let current = self.snapshot.load_full();
        if req.to == state.live {
            return Ok(SwitchOutcome {
                changed: false,
                live: state.live,
                generation: state.generation,
                record: None,
                message: format!("{} is already live; nothing changed", req.to),
            });
        }
        // 1. Refuse a side that cannot serve, unless forced.
        let target = &current.pools[req.to];
        if !req.forced && target.healthy_count() == 0 {
            return Err(SwitchError::Unhealthy {
                side: req.to,
                detail: describe_health(target),
            });
        }
        // 2. Persist before anything changes, so a crash never loses a switch
        //    that was reported done.
        let (at, at_unix_ms) = now();
        let next = state
            .switched(&req, at, at_unix_ms)
            .map_err(|e| SwitchError::Persist(e.to_string()))?;
        let store = self.store.clone();
        let to_save = next.clone();
        tokio::task::spawn_blocking(move || save_router(store.as_ref(), &to_save))
            .await
            .map_err(|e| SwitchError::Persist(e.to_string()))?
            .map_err(|e| SwitchError::Persist(e.to_string()))?;

        // 3. One atomic store: every request that loads after this goes to the new side.
        let from = state.live;
        let old_epoch = current.epochs[from].clone();
        current.epochs[req.to].revive();
        old_epoch.retire(next.generation);
        // Shadowing compares the idle side with the live one; after a switch
        // the roles are reversed, so a running shadow ends here.
        if let Some(s) = &current.shadow {
            s.stop();
            self.events
                .emit("shadow", serde_json::json!({"shadow": s.report()}));
            tracing::info!("shadowing stopped by the switch");
        }
        self.snapshot.store(Arc::new(Snapshot {
            generation: next.generation,
            live: req.to,
            shadow: None,
            ..(*current).clone()
        }));
        *state = next;
        let record = state.history.last().cloned();
        let kind = match req.kind {
            SwitchKind::Rollback => "rollback",
            _ => "switch",
        };
        *self
            .switch_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        self.events.emit(
            "switch",
            serde_json::json!({"from": from, "to": req.to, "kind": kind, "generation": state.generation,
                "forced": req.forced, "actor": req.actor, "reason": req.reason, "at_unix_ms": at_unix_ms,
                "record": record}),
        );
        tracing::info!(from = %from, to = %req.to, generation = state.generation, kind = ?req.kind, forced = req.forced, actor = %req.actor, reason = %req.reason, "switched");

        // 4. Let the old side's live traffic finish, up to the drain timeout.
        self.spawn_drain(from, state.generation, old_epoch);
        Ok(SwitchOutcome {
            changed: true,
            live: req.to,
            generation: state.generation,
            record,
            message: format!("{} is now live (was {from})", req.to),
        })
    }

    fn spawn_drain(self: &Arc<Self>, side: Side, generation: u64, epoch: Arc<Epoch>) {
        let router = self.clone();
        let timeout = self.config.switch.drain_timeout;
        let deadline = Instant::now() + timeout;
        self.drain_deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())[side] = Some(deadline);
        tokio::spawn(async move {
            let started = Instant::now();
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                _ = epoch.wait_idle() => {
                    tracing::info!(%side, elapsed_ms = started.elapsed().as_millis() as u64, "old side drained");
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = router.shutdown.cancelled() => return,
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                _ = router.shutdown.cancelled() => return,
            }
            router.finish_drain(side, generation, &epoch).await;
        });
    }

    /// At the drain deadline: cut what still holds the epoch and give the side
    /// a fresh one, unless the side went live again or a later switch owns the drain.
    async fn finish_drain(&self, side: Side, generation: u64, epoch: &Arc<Epoch>) {
        let _state = self.state.lock().await;
        let current = self.snapshot.load_full();
        if current.live == side
            || epoch.retired_by() != generation
            || !Arc::ptr_eq(&current.epochs[side], epoch)
        {
            return;
        }
        let left = epoch.inflight();
        epoch.cut_token().cancel();
        let mut epochs = current.epochs.clone();
        epochs[side] = Epoch::new();
        self.snapshot.store(Arc::new(Snapshot {
            epochs,
            ..(*current).clone()
        }));
        self.drain_deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())[side] = None;
        if left > 0 {
            tracing::warn!(%side, cut = left, "drain timeout passed; cut the old side's remaining requests and connections");
        } else {
            tracing::debug!(%side, "drain complete");
        }
    }

    /// A consistent view of the router for the API and CLI.
    pub async fn status(&self) -> Status {
        let state = self.state.lock().await.clone();
        let snap = self.snapshot.load_full();
        let deadlines = self
            .drain_deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = Instant::now();
        Status {
            live: snap.live,
            previous: state.rollback_target().ok(),
            generation: state.generation,
            last_switch: state.history.last().cloned(),
            listeners: self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            drain_timeout_ms: self.config.switch.drain_timeout.as_millis() as u64,
            sides: Sides::from_fn(|side| {
                let pool = &snap.pools[side];
                let epoch = &snap.epochs[side];
                SideStatus {
                    role: if side == snap.live { "live" } else { "idle" }.to_string(),
                    healthy: pool.healthy_count(),
                    upstreams: pool
                        .upstreams
                        .iter()
                        .map(|u| UpstreamStatus {
                            address: u.address.clone(),
                            health: u.health(),
                            outstanding: u.outstanding(),
                            last_error: u.last_error(),
                        })
                        .collect(),
                    in_flight: pool.upstreams.iter().map(|u| u.outstanding()).sum(),
                    upgraded: pool.upgraded(),
                    draining: match (epoch.is_draining() && side != snap.live, deadlines[side]) {
                        (true, Some(d)) => Some(DrainStatus {
                            remaining: epoch.inflight(),
                            deadline_in_ms: d.saturating_duration_since(now).as_millis() as u64,
                        }),
                        _ => None,
                    },
                }
            }),
        }
    }

    /// The side a rollback would go to.
    pub async fn rollback_target(&self) -> Result<Side, SwitchError> {
        self.state
            .lock()
            .await
            .rollback_target()
            .map_err(|_| SwitchError::NoHistory)
    }

    /// Switch history, oldest first.
    pub async fn history(&self) -> Vec<SwitchRecord> {
        self.state.lock().await.history.clone()
    }

    /// Starts recording live traffic to `path`. One recording at a time.
    pub async fn start_recording(
        &self,
        name: &str,
        options: RecordOptions,
    ) -> Result<RecordStatus, String> {
        if let Some(r) = &self.snapshot.load().recorder {
            return Err(already_recording(r));
        }
        // The file is created before the state lock is taken: no I/O ever
        // runs under the lock that switches and status wait on.
        let recorder = Recorder::start(&self.config.record.dir, name, options).await?;
        let refused = {
            let _state = self.state.lock().await;
            let current = self.snapshot.load_full();
            match &current.recorder {
                Some(r) => Some(already_recording(r)),
                None => {
                    self.snapshot.store(Arc::new(Snapshot {
                        recorder: Some(recorder.clone()),
                        ..(*current).clone()
                    }));
                    None
                }
            }
        };
        if let Some(message) = refused {
            recorder.finish().await;
            let _ = tokio::fs::remove_file(&recorder.path).await;
            return Err(message);
        }
        tracing::info!(path = %recorder.path.display(), "recording live traffic");
        Ok(recorder.status())
    }

    /// Stops the recording and waits until its file is flushed.
    pub async fn stop_recording(&self) -> Result<RecordStatus, String> {
        let recorder = {
            let _state = self.state.lock().await;
            let current = self.snapshot.load_full();
            let Some(r) = current.recorder.clone() else {
                return Err("no recording is running".into());
            };
            self.snapshot.store(Arc::new(Snapshot {
                recorder: None,
                ..(*current).clone()
            }));
            r
        };
        recorder.finish().await;
        Ok(recorder.status())
    }

    /// Starts mirroring live traffic to the idle side. One run at a time;
    /// with `options.duration_ms` it stops by itself.
    pub async fn start_shadow(
        self: &Arc<Self>,
        options: ShadowOptions,
    ) -> Result<Arc<Shadow>, String> {
        let _state = self.state.lock().await;
        let current = self.snapshot.load_full();
        if current.shadow.is_some() {
            return Err("shadowing is already running; stop it first".into());
        }
        let idle = current.live.other();
        if current.pools[idle].healthy_count() == 0 {
            return Err(format!(
                "refusing to shadow to {idle}: no healthy upstream ({})",
                describe_health(&current.pools[idle])
            ));
        }
        let shadow = Shadow::start(self.clone(), options, current.live);
        self.snapshot.store(Arc::new(Snapshot {
            shadow: Some(shadow.clone()),
            ..(*current).clone()
        }));
        *self.last_shadow.lock().unwrap_or_else(|p| p.into_inner()) = Some(shadow.clone());
        if let Some(ms) = shadow.options.duration_ms {
            let (router, s) = (self.clone(), shadow.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = s.wait_stopped() => return,
                    _ = router.shutdown.cancelled() => return,
                }
                router.stop_shadow_run(&s).await;
            });
        }
        tracing::info!(live = %current.live, %idle, percent = shadow.options.percent, "shadowing live traffic to the idle side");
        Ok(shadow)
    }

    /// Stops the running shadow; its report stays readable.
    pub async fn stop_shadow(&self) -> Result<Arc<Shadow>, String> {
        let _state = self.state.lock().await;
        let current = self.snapshot.load_full();
        let Some(s) = current.shadow.clone() else {
            return Err("shadowing is not running".into());
        };
        s.stop();
        self.snapshot.store(Arc::new(Snapshot {
            shadow: None,
            ..(*current).clone()
        }));
        self.events
            .emit("shadow", serde_json::json!({"shadow": s.report()}));
        tracing::info!("shadowing stopped");
        Ok(s)
    }

    /// Stops `run` if it is still the running shadow (for time limits).
    pub async fn stop_shadow_run(&self, run: &Arc<Shadow>) {
        let _state = self.state.lock().await;
        let current = self.snapshot.load_full();
        run.stop();
        if current.shadow.as_ref().is_some_and(|s| Arc::ptr_eq(s, run)) {
            self.snapshot.store(Arc::new(Snapshot {
                shadow: None,
                ..(*current).clone()
            }));
            self.events
                .emit("shadow", serde_json::json!({"shadow": run.report()}));
            tracing::info!("shadowing stopped: its time or request count is up");
        }
    }

    /// Switches since this process started, by kind (`switch`, `rollback`).
    pub fn switch_counts(&self) -> BTreeMap<&'static str, u64> {
        self.switch_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Open client connections of a listener, and how many of them are
    /// parked (idle keep-alive, holding no buffers).
    pub fn client_connections(&self, kind: ListenerKind) -> ClientCount {
        let g = &self.clients[kind as usize];
        ClientCount {
            open: g.open.load(Ordering::Relaxed),
            parked: g.parked.load(Ordering::Relaxed),
        }
    }

    /// The running or last shadow run, for reports.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.last_shadow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The recording in progress, if any.
    pub fn recording(&self) -> Option<RecordStatus> {
        self.snapshot.load().recorder.as_ref().map(|r| r.status())
    }

    /// Live traffic the side has received since the router started.
    pub fn live_window(&self, side: Side) -> bluegreen_core::bake::Window {
        self.snapshot.load().pools[side].live_stats.window()
    }

    /// Forgets the health of a side's upstreams (a new version was just put
    /// there), so gates wait for fresh checks.
    pub fn reset_health(&self, side: Side) {
        let h = &self.config.health;
        for u in &self.snapshot.load().pools[side].upstreams {
            u.reset_health(h.healthy_threshold, h.unhealthy_threshold);
        }
    }

    /// (healthy, total, one line per upstream that is not healthy).
    pub fn side_health(&self, side: Side) -> (usize, usize, String) {
        let snap = self.snapshot.load();
        let pool = &snap.pools[side];
        (
            pool.healthy_count(),
            pool.upstreams.len(),
            describe_health(pool),
        )
    }

    /// Waits until the side's live traffic from before the last switch has
    /// finished (or been cut at the drain deadline), up to `limit`.
    pub async fn wait_drained(&self, side: Side, limit: Duration) -> bool {
        let epoch = self.snapshot.load().epochs[side].clone();
        if !epoch.is_draining() {
            return true;
        }
        tokio::time::timeout(limit, epoch.wait_idle()).await.is_ok()
    }

    /// True when the live side has an upstream that is not known to be down.
    pub fn ready(&self) -> bool {
        let snap = self.snapshot.load();
        snap.pools[snap.live]
            .upstreams
            .iter()
            .any(|u| u.health() != Health::Unhealthy)
    }
}

fn pool(config: &Config, side: Side, rise: u32, fall: u32) -> Result<Arc<Pool>, RouterError> {
    Pool::new(
        side,
        &config.environments[side].upstreams,
        config.proxy.balance,
        rise,
        fall,
    )
    .map(Arc::new)
    .map_err(RouterError::Config)
}

fn describe_health(pool: &Pool) -> String {
    pool.upstreams
        .iter()
        .map(|u| {
            let health = match u.health() {
                Health::Unknown => "not checked yet",
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
            };
            match u.last_error() {
                Some(e) if u.health() != Health::Healthy => format!("{} {health}: {e}", u.address),
                _ => format!("{} {health}", u.address),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn now() -> (String, u64) {
    let t = SystemTime::now();
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (humantime::format_rfc3339_millis(t).to_string(), ms)
}
