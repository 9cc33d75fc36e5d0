//! The control side of the router: everything that changes how requests
//! are routed goes through [`Router::route`], under one lock around the
//! persisted state: switch and rollback (`switch`), the drain of the old
//! side (`drain`), taps on and off (`taps`); `status` is the view of it all.

mod cluster;
mod drain;
mod error;
mod fresh;
mod handover;
mod hold;
mod reload;
mod sampler;
mod status;
mod switch;
mod taps;
mod views;
mod weight;

use crate::events::Series;
use crate::plane::Plane;

use crate::settings::ProxySettings;
use crate::snapshot::{Epoch, Snapshot};
use crate::taps::recorder::RecordStatus;
use crate::taps::shadow::Shadow;
use crate::upstream::pool::Pool;
use bluegreen_core::config::Config;
use bluegreen_core::health::Health;
use bluegreen_core::state::{RouterState, SwitchRecord};
use bluegreen_core::{Side, Sides};
use bluegreen_store::{load_router, save_router, StateStore, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

pub(crate) use cluster::lost_members;
pub use cluster::{ClusterStatus, Convergence, NodeReport, NodeStatus};
pub use error::ControlError;
pub use hold::PauseStatus;
pub use sampler::spawn_sampler;
pub use switch::{SwitchError, SwitchOutcome};

/// The router: routing snapshot, upstream client and the persisted state.
pub struct Router {
    /// What requests need; the router owns it and swaps its snapshot.
    pub plane: Arc<Plane>,
    store: Arc<dyn StateStore>,
    /// The persisted state; holding this lock is what serialises routing changes.
    state: AsyncMutex<RouterState>,
    drain_deadlines: Mutex<Sides<Option<Instant>>>,
    /// The running or last shadow run, kept for its report.
    last_shadow: Mutex<Option<Arc<Shadow>>>,
    /// Per-second live traffic of both sides, for charts.
    pub series: Series,
    /// Switches since this process started, by kind (for metrics).
    switch_counts: Mutex<BTreeMap<&'static str, u64>>,
    /// The ACME loop, when there is a `[tls.acme]` table.
    acme: std::sync::OnceLock<Arc<crate::tls::acme::Acme>>,
    /// `[[notify]]`'s outbox and sender, once started.
    notifier: std::sync::OnceLock<Arc<crate::notify::Notifier>>,
    /// Set while the state is being handed to a new process: the admin API
    /// refuses changes (they would be lost).
    handing_over: std::sync::atomic::AtomicBool,
    /// Cancels a handover whose new process is not ready yet: a switch or
    /// rollback must never wait on an upgrade.
    handover_abort: std::sync::Mutex<Option<CancellationToken>>,
    /// The shared side of the store, when several nodes share the state.
    cluster: Option<Arc<dyn bluegreen_store::Cluster>>,
    /// The store revision of the state this node applied last.
    applied: std::sync::atomic::AtomicI64,
    /// A shared state this node could not use (not retried until it changes).
    rejected: std::sync::atomic::AtomicI64,
    /// The other nodes' traffic, for cluster-wide windows.
    peers: Mutex<cluster::Peers>,
    /// Asks for this node's report to be written now.
    report_due: tokio::sync::Notify,
    /// When this process started (its counters start then).
    started_ms: u64,
    /// This node's part in a cluster-wide shadow run: the run's id, the
    /// local run, and whether it was started by following the shared
    /// `shadow.run` (true) or by this node's deploy (false).
    shared_shadow: Mutex<Option<(u64, Arc<Shadow>, bool)>>,
    /// The last cluster shadow run this node could not take part in.
    shadow_refused: std::sync::atomic::AtomicU64,
    /// Shadow differences accepted as intended (`bluegreen shadow accept`).
    accepted: Mutex<std::collections::BTreeSet<String>>,
    /// The router the user runs, when bluegreen drives it (`[router]`):
    /// a switch is applied there before it is persisted here.
    driver: Option<Arc<dyn crate::drivers::Driver>>,
}

/// The control reads and swaps the plane's fields as its own.
impl std::ops::Deref for Router {
    type Target = Plane;

    fn deref(&self) -> &Plane {
        &self.plane
    }
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("config: {0}")]
    Config(String),
}

/// The state could not be written: nothing changed.
#[derive(Debug)]
pub(crate) struct PersistFailed(pub String, pub Refusal);

/// Why the state was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The store failed (disk, or etcd mid-call).
    Failed,
    /// The shared store is out of reach: the node is failing static.
    Unreachable,
    /// Another node changed the state first.
    Conflict,
    /// The driven router (nginx) did not take the change.
    Router,
}

impl PersistFailed {
    fn of(e: StoreError) -> PersistFailed {
        let refusal = match &e {
            StoreError::Conflict { .. } => Refusal::Conflict,
            StoreError::Etcd { .. } => Refusal::Unreachable,
            _ => Refusal::Failed,
        };
        PersistFailed(e.to_string(), refusal)
    }
}

impl From<PersistFailed> for String {
    fn from(e: PersistFailed) -> String {
        match e.1 {
            Refusal::Router => format!("the router refused the change: {}", e.0),
            _ => format!("could not persist the router state: {}", e.0),
        }
    }
}

/// An edit of a copy of the snapshot.
pub(crate) type Edit = Box<dyn FnOnce(&mut Snapshot) + Send>;

/// What a routing change does, decided under the state lock from the state
/// and the snapshot as they are.
pub(crate) struct Change<T> {
    /// A new durable state: written (temp file, fsync, rename) before
    /// anything else changes, so a change reported done survives a crash.
    pub state: Option<RouterState>,
    /// Then an edit of a copy of the snapshot, stored whole in one swap.
    pub edit: Option<Edit>,
    /// What the caller gets back.
    pub value: T,
}

impl<T> Change<T> {
    /// Nothing changes.
    pub fn none(value: T) -> Change<T> {
        Change {
            state: None,
            edit: None,
            value,
        }
    }

    /// Only the snapshot changes (taps, epochs): nothing to persist.
    pub fn snapshot(edit: impl FnOnce(&mut Snapshot) + Send + 'static, value: T) -> Change<T> {
        Change {
            state: None,
            edit: Some(Box::new(edit)),
            value,
        }
    }
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
                match save_router(store.as_ref(), &s) {
                    Ok(()) => s,
                    // Another node of a cluster started first and wrote it.
                    Err(StoreError::Conflict { .. }) => {
                        load_router(store.as_ref())?.ok_or_else(|| {
                            RouterError::Config("the shared state vanished while starting".into())
                        })?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };

        // The session key lives beside the state (shared by every node of
        // a cluster, so a cookie signed by one verifies on all; a store
        // without a directory gets one for this process only).
        let signer = Arc::new(match store.cluster() {
            Some(_) => cluster::shared_signer(store.as_ref())?,
            None => crate::plane::signer::Signer::load_or_create(&config.state.dir)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "session key not kept on disk; cookies signed by this process only");
                    crate::plane::signer::Signer::ephemeral()
                }),
        });

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
            hold: None,
            maintenance: state.maintenance.clone().map(Arc::new),
            split: state.split,
            sessions: session_policy(&config),
            // The pin follows from the last switch and the window, so a
            // restart or an upgrade inside the window keeps it.
            pin: pin_of(&state, &config),
        };

        let cluster = store.cluster();
        let freshness = cluster
            .as_ref()
            .map(|c| Arc::new(fresh::Freshness::new(c.converge_timeout())));
        let driver = crate::drivers::of(&config);
        Ok(Arc::new(Router {
            driver,
            plane: Arc::new(Plane::new(snapshot, config, signer, freshness)),
            store,
            state: AsyncMutex::new(state),
            drain_deadlines: Mutex::new(Sides::default()),
            last_shadow: Mutex::new(None),
            series: Series::default(),
            switch_counts: Mutex::new(BTreeMap::new()),
            acme: std::sync::OnceLock::new(),
            notifier: std::sync::OnceLock::new(),
            handing_over: std::sync::atomic::AtomicBool::new(false),
            handover_abort: std::sync::Mutex::new(None),
            applied: std::sync::atomic::AtomicI64::new(
                cluster
                    .as_ref()
                    .map_or(0, |c| c.revision(bluegreen_store::ROUTER_KEY)),
            ),
            cluster,
            rejected: std::sync::atomic::AtomicI64::new(0),
            peers: Mutex::new(cluster::Peers::default()),
            report_due: tokio::sync::Notify::new(),
            started_ms: now().1,
            shared_shadow: Mutex::new(None),
            shadow_refused: std::sync::atomic::AtomicU64::new(0),
            accepted: Mutex::new(Default::default()),
        }))
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

    /// The one way routing changes. Under the state lock, `plan` looks at
    /// the persisted state and the current snapshot and says what changes:
    /// a new state is persisted first (a failure changes nothing), then a
    /// copy of the snapshot is edited and stored in one atomic swap. Switch,
    /// rollback, drain and taps all come through here; later, so do weights,
    /// sessions and reloads.
    pub(crate) async fn route<T, E: From<PersistFailed>>(
        &self,
        plan: impl FnOnce(&RouterState, &Arc<Snapshot>) -> Result<Change<T>, E>,
    ) -> Result<T, E> {
        self.route_then(plan, |value| value).await
    }

    /// [`Router::route`], then `after` with the plan's value while the lock
    /// is still held: what a change announces or starts (events, counters,
    /// the drain) happens in the order of the changes themselves.
    pub(crate) async fn route_then<T, U, E: From<PersistFailed>>(
        &self,
        plan: impl FnOnce(&RouterState, &Arc<Snapshot>) -> Result<Change<T>, E>,
        after: impl FnOnce(T) -> U,
    ) -> Result<U, E> {
        let mut state = self.state.lock().await;
        let current = self.snapshot.load_full();
        let change = plan(&state, &current)?;
        if let Some(next) = change.state {
            if let Some(refusal) = self.fail_static() {
                return Err(PersistFailed(refusal, Refusal::Unreachable).into());
            }
            // A driven router takes the new live side first: refused
            // there, nothing changes here.
            let driven = self.drive(state.live, next.live).await?;
            let store = self.store.clone();
            let to_save = next.clone();
            let saved = tokio::task::spawn_blocking(move || save_router(store.as_ref(), &to_save))
                .await
                .map_err(|e| PersistFailed(e.to_string(), Refusal::Failed))
                .and_then(|r| r.map_err(PersistFailed::of));
            if let Err(e) = saved {
                if driven {
                    self.undrive(state.live).await;
                }
                return Err(e.into());
            }
            *state = next;
            self.wrote_state();
        }
        if let Some(edit) = change.edit {
            let mut next = (*current).clone();
            edit(&mut next);
            self.snapshot.store(Arc::new(next));
        }
        Ok(after(change.value))
    }

    /// The driven router, when the live side changes from `from` to `to`:
    /// true when it took the change (there is one to undo).
    async fn drive(&self, from: Side, to: Side) -> Result<bool, PersistFailed> {
        let Some(driver) = self.driver.as_ref().filter(|_| from != to) else {
            return Ok(false);
        };
        let config = self.config();
        match driver.apply(&config, to).await {
            Ok(done) => {
                tracing::info!(router = driver.name(), "{done}");
                Ok(true)
            }
            Err(e) => Err(PersistFailed(e.to_string(), Refusal::Router)),
        }
    }

    /// The driven router back on `live` (the state could not be written).
    async fn undrive(&self, live: Side) {
        if let Some(driver) = &self.driver {
            let config = self.config();
            if let Err(e) = driver.apply(&config, live).await {
                tracing::error!(error = %e, "the switch was not recorded and {} could not be put back on {live}: it may serve the other side; check it", driver.name());
            }
        }
    }

    /// The driven router's file written again for the live side under
    /// `config` (a reload changed the upstreams), under the state lock so
    /// it is ordered with switches; the side it was written for.
    pub(crate) async fn redrive(&self, config: &Config) -> Result<Side, ControlError> {
        let state = self.state.lock().await;
        let Some(driver) = &self.driver else {
            return Ok(state.live);
        };
        match driver.apply(config, state.live).await {
            Ok(done) => {
                tracing::info!(router = driver.name(), "{done}");
                Ok(state.live)
            }
            Err(e) => Err(ControlError::Failed {
                code: "router_refused",
                message: format!("the reload changes nothing: {e}"),
            }),
        }
    }

    /// At start: the driven router is given the live side of the state,
    /// under the state lock (a switch waits for it). A sentence for the
    /// log; `None` without a driven router.
    pub async fn start_driver(&self) -> Option<Result<String, crate::drivers::DriverError>> {
        let driver = self.driver.as_ref()?;
        let state = self.state.lock().await;
        let config = self.config();
        Some(driver.start(&config, state.live).await)
    }

    /// Follows the driven router's own traffic into each side's counters,
    /// so the judge sees the requests it carried (nginx's access log,
    /// HAProxy's `show stat`).
    pub fn spawn_driver_log(&self, stop: CancellationToken) {
        if let Some(driver) = &self.driver {
            driver.follow(self.plane.clone(), stop);
        }
    }

    /// The driven router's name, when bluegreen drives one.
    pub fn driven(&self) -> Option<&'static str> {
        self.driver.as_ref().map(|d| d.name())
    }

    /// Forgets the health of a side's upstreams (a new version was just put
    /// there), so gates wait for fresh checks.
    pub fn reset_health(&self, side: Side) {
        let config = self.config();
        let h = &config.health;
        for u in &self.snapshot.load().pools[side].upstreams {
            u.reset_health(h.healthy_threshold, h.unhealthy_threshold);
        }
    }
}

/// The sessions pin the last switch left, if its window is still open
/// (none after a rollback, or without `[sessions]`).
fn pin_of(state: &RouterState, config: &Config) -> Option<crate::snapshot::Pin> {
    let window = config.sessions.as_ref()?.window;
    let last = state.history.last()?;
    let until_ms = last.at_unix_ms + window.as_millis() as u64;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (last.kind == bluegreen_core::state::SwitchKind::Switch && now_ms < until_ms).then_some(
        crate::snapshot::Pin {
            side: last.from,
            generation: last.generation,
            until_ms,
        },
    )
}

/// `[sessions]` for the snapshot.
pub(crate) fn session_policy(config: &Config) -> Option<Arc<crate::snapshot::SessionPolicy>> {
    config.sessions.as_ref().map(|s| {
        Arc::new(crate::snapshot::SessionPolicy {
            cookie: s.cookie.clone(),
            preview_cookie: format!("{}_preview", s.cookie),
            app_cookie: s.app_cookie.clone(),
            window: s.window,
        })
    })
}

fn pool(config: &Config, side: Side, rise: u32, fall: u32) -> Result<Arc<Pool>, RouterError> {
    let env = &config.environments[side];
    let tls = env
        .tls
        .as_ref()
        .map(|t| crate::upstream::tls::UpstreamTls::new(t).map(Arc::new))
        .transpose()
        .map_err(|e| RouterError::Config(format!("environments.{side}.tls: {e}")))?;
    let pool = Pool::new(side, &env.upstreams, config.proxy.balance, rise, fall, tls)
        .map_err(RouterError::Config)?;
    for u in &pool.upstreams {
        u.set_max_requests(config.proxy.upstream_max_requests);
    }
    Ok(Arc::new(pool))
}

pub(crate) fn describe_health(pool: &Pool) -> String {
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

pub(crate) fn now() -> (String, u64) {
    let t = SystemTime::now();
    (humantime::format_rfc3339_millis(t).to_string(), ms_of(t))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    ms_of(SystemTime::now())
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen_core::state::{SwitchKind, SwitchRequest};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store in memory whose writes can be made to fail.
    #[derive(Default)]
    struct Flaky {
        data: Mutex<BTreeMap<String, Vec<u8>>>,
        broken: AtomicBool,
    }

    impl StateStore for Flaky {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.data.lock().unwrap().get(key).cloned())
        }
        fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(StoreError::Io {
                    path: self.locate(key),
                    source: std::io::Error::other("disk full"),
                });
            }
            self.data.lock().unwrap().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn locate(&self, key: &str) -> std::path::PathBuf {
            format!("/mem/{key}.json").into()
        }
    }

    fn router(store: Arc<Flaky>) -> Arc<Router> {
        let text = "[proxy]\nlisten = \"127.0.0.1:1\"\n[environments.blue]\nupstreams = [\"127.0.0.1:2\"]\n[environments.green]\nupstreams = [\"127.0.0.1:3\"]\n";
        let config = Config::parse(text, "t", std::path::Path::new("/")).unwrap();
        Router::new(config, store).unwrap()
    }

    fn to_green() -> SwitchRequest {
        SwitchRequest {
            to: Side::Green,
            kind: SwitchKind::Switch,
            forced: true,
            actor: "t".into(),
            reason: "t".into(),
        }
    }

    #[tokio::test]
    async fn a_switch_that_cannot_be_persisted_changes_nothing() {
        let store = Arc::new(Flaky::default());
        let r = router(store.clone());
        let before = r.snapshot();
        store.broken.store(true, Ordering::SeqCst);
        let err = r.switch(to_green()).await.unwrap_err();
        assert!(
            matches!(err, crate::SwitchError::Persist(ref m) if m.contains("disk full")),
            "{err}"
        );
        assert!(
            Arc::ptr_eq(&before, &r.snapshot()),
            "the snapshot was not swapped"
        );
        assert_eq!(r.live(), Side::Blue);
        assert_eq!(r.history().await.len(), 0);
        store.broken.store(false, Ordering::SeqCst);
        let done = r.switch(to_green()).await.unwrap();
        assert!(done.changed);
        assert_eq!((r.live(), r.snapshot().generation), (Side::Green, 1));
        assert_eq!(r.history().await.len(), 1);
    }

    #[tokio::test]
    async fn taps_change_the_snapshot_without_touching_the_state() {
        let store = Arc::new(Flaky::default());
        let r = router(store.clone());
        store.broken.store(true, Ordering::SeqCst);
        let generation = r.snapshot().generation;
        let changed = r
            .route(|_, _| Ok::<_, String>(Change::snapshot(|s| s.generation = 42, "done")))
            .await;
        assert_eq!(changed, Ok("done"), "no persist for a snapshot-only change");
        assert_eq!(r.snapshot().generation, 42);
        let refused = r.route(|_, _| Err::<Change<()>, _>("no".to_string())).await;
        assert_eq!(refused, Err("no".to_string()));
        assert_eq!(r.snapshot().generation, 42);
        assert_ne!(generation, 42);
    }
}
