//! Several router nodes on one shared store (etcd). The desired state lives
//! in the store; every node follows it through the store's watch and
//! applies a change with the same snapshot swap as a local switch, then
//! reports the revision it applied under `nodes/<node>`. A switch made here
//! waits until every node reports it (`converge`). When the store is out of
//! reach the node keeps serving what it applied last and refuses changes
//! (fail static); when it is back, the session reads everything again and
//! the node catches up without a restart.

mod keys;
mod members;
pub(crate) use members::lost_members;
mod shadow;

use super::{ControlError, PersistFailed, Router};
use crate::events::Event;
use bluegreen_core::bake::Window;
use bluegreen_core::state::RouterState;
use bluegreen_core::{Side, Sides};
use bluegreen_store::cluster::{Cluster, Link, Versioned, View};
use bluegreen_store::ROUTER_KEY;
pub(super) use keys::shared_signer;
use keys::{SessionKeys, SESSION_KEYS};
use members::{Member, MEMBERS_DIR};
use serde::{Deserialize, Serialize};
use shadow::SHADOW_RUN;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a node says about itself, under `nodes/<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// The store revision of the state this node applied.
    pub revision: i64,
    pub generation: u64,
    pub live: Side,
    /// Healthy upstreams of each side, as this node's checks see them.
    pub healthy: Sides<String>,
    pub admin: Option<String>,
    /// When this process started: its traffic counters start at zero then.
    pub started_ms: u64,
    /// This node's live traffic per side since it started (the same fixed
    /// buckets on every node, so the cluster's traffic is their sum).
    /// Written with the counted latency buckets only: the report is
    /// rewritten often and etcd keeps every revision until compacted.
    #[serde(serialize_with = "sparse_windows")]
    pub windows: Sides<Window>,
}

/// `windows` with each histogram as its counted buckets only (readers take
/// `buckets` first, so every version since they were added reads it).
fn sparse_windows<S: serde::Serializer>(w: &Sides<Window>, s: S) -> Result<S::Ok, S::Error> {
    use bluegreen_core::latency::Sparse;
    #[derive(Serialize)]
    struct W<'a> {
        requests: u64,
        errors: u64,
        client_errors: u64,
        named_4xx: [u64; 4],
        latency: Sparse<'a>,
    }
    fn side(w: &Window) -> W<'_> {
        W {
            requests: w.requests,
            errors: w.errors,
            client_errors: w.client_errors,
            named_4xx: w.named_4xx,
            latency: Sparse(&w.latency),
        }
    }
    Sides {
        blue: side(&w.blue),
        green: side(&w.green),
    }
    .serialize(s)
}

/// The longest a node's report goes unwritten (with its traffic as of then).
const REPORT_HEARTBEAT: Duration = Duration::from_secs(15);

impl NodeReport {
    /// Equal in everything but the traffic counters.
    fn same_but_traffic(&self, other: &NodeReport) -> bool {
        self.node == other.node
            && self.revision == other.revision
            && self.generation == other.generation
            && self.live == other.live
            && self.healthy == other.healthy
            && self.admin == other.admin
            && self.started_ms == other.started_ms
    }
}

/// Whether the shared deploy book has a deploy running, read again only
/// when its revision changed.
#[derive(Default)]
struct Deploying {
    revision: i64,
    running: bool,
}

impl Deploying {
    fn now(&mut self, view: &tokio::sync::watch::Receiver<View>) -> bool {
        let v = view.borrow();
        let Some(book) = v.values.get(bluegreen_store::DEPLOYS_KEY) else {
            return false;
        };
        if book.revision != self.revision {
            self.revision = book.revision;
            self.running =
                serde_json::from_slice::<bluegreen_core::deploy::DeployBook>(&book.value)
                    .ok()
                    .and_then(|b| b.current)
                    .is_some_and(|d| !d.is_finished());
        }
        self.running
    }
}

/// One node in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub generation: u64,
    pub revision: i64,
    pub live: Side,
    /// Applied the desired state (`SYNCED`), or behind it (`STALE`).
    pub synced: bool,
    pub healthy: Sides<String>,
    pub admin: Option<String>,
}

/// The cluster in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// The store and prefix.
    pub store: String,
    pub connected: bool,
    /// When the link was lost and why (fail static until it is back).
    pub down_since_ms: Option<u64>,
    pub error: Option<String>,
    /// The revision of the desired state.
    pub revision: i64,
    pub nodes: Vec<NodeStatus>,
    /// The node running deploys, if one holds the lock.
    pub deploy_lock: Option<String>,
    /// Nodes known to the cluster that report no more (their lease ended):
    /// listed until an operator forgets them or `forget_after` passes.
    #[serde(default)]
    pub lost: Vec<LostNode>,
}

/// A node that was part of the cluster and reports no more.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostNode {
    pub node: String,
    /// When a node last saw its report (Unix ms).
    pub last_seen_ms: u64,
}

/// How far a change got: every live node, or not all within the timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Convergence {
    pub revision: i64,
    pub synced: Vec<String>,
    /// Nodes that had not applied it when the wait ended.
    pub stale: Vec<String>,
    pub waited_ms: u64,
}

/// Other nodes' traffic, kept monotonic: a node that restarts or goes
/// away leaves its last counters in `retired`, so sums never go back.
#[derive(Default)]
pub(crate) struct Peers {
    /// Last windows of every (node, process start) seen: counters only
    /// grow within a process, so these add up to the cluster's traffic,
    /// and a process that stops reporting (or restarts) still counts once.
    last: BTreeMap<(String, u64), Sides<Window>>,
}

impl Router {
    /// The shared store's cluster side, when the state is shared.
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.as_ref()
    }

    /// Follows the shared state until `stop`: applies what other nodes
    /// write, announces the link going down and coming back, and rewrites
    /// this node's report when it changes (at most once a second for
    /// traffic alone).
    pub fn spawn_cluster(self: &Arc<Self>, stop: CancellationToken) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        self.spawn_freshness(stop.clone());
        // This node joins the members (a record without a lease).
        {
            let (c, me) = (cluster.clone(), cluster.node().to_string());
            tokio::task::spawn_blocking(move || {
                let record = Member {
                    node: me.clone(),
                    last_seen_ms: super::now_ms(),
                };
                let key = format!("{MEMBERS_DIR}/{me}");
                if let Err(e) = c.put_record(&key, serde_json::to_vec(&record).ok()) {
                    tracing::warn!(error = %e, "could not record this node among the cluster's members");
                }
            });
        }
        let router = self.clone();
        let mut view = cluster.view();
        let stop_follow = stop.clone();
        tokio::spawn(async move {
            let mut link = Link::Connecting;
            let mut keys_seen = 0;
            loop {
                let (desired, now) = {
                    let v = view.borrow_and_update();
                    router.update_peers(&v);
                    if let Some(k) = v
                        .values
                        .get(SESSION_KEYS)
                        .filter(|k| k.revision > keys_seen)
                    {
                        keys_seen = k.revision;
                        if let Some((current, previous)) = SessionKeys::parse(&k.value) {
                            router.signer.adopt(&current, previous.as_deref());
                        }
                    }
                    (v.values.get(ROUTER_KEY).cloned(), v.link.clone())
                };
                let shadow_run = view
                    .borrow()
                    .values
                    .get(SHADOW_RUN)
                    .map(|v| v.value.clone());
                router.link_changed(&link, &now);
                link = now;
                if let Some(d) = desired {
                    router.apply_desired(&d).await;
                }
                router.follow_shadow(shadow_run.as_deref()).await;
                tokio::select! {
                    r = view.changed() => if r.is_err() { return },
                    _ = stop_follow.cancelled() => return,
                }
            }
        });
        let router = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last: Option<NodeReport> = None;
            let mut written = std::time::Instant::now();
            let mut share_sent: Option<(std::time::Instant, bool)> = None;
            let mut deploying = Deploying::default();
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = router.report_due.notified() => {}
                    _ = stop.cancelled() => return,
                }
                router.publish_share(&mut share_sent).await;
                router.keep_members(&cluster, &mut seen);
                let report = router.node_report();
                // What a reader needs at once (the state applied, health,
                // where to reach it) is written when it changes; traffic
                // alone every second only while a deploy runs somewhere
                // (its gates judge the whole cluster's traffic), else with
                // the heartbeat. Every write is a revision etcd keeps.
                let changed = match &last {
                    None => true,
                    Some(l) => !l.same_but_traffic(&report),
                };
                let traffic_due = last.as_ref().is_some_and(|l| l.windows != report.windows)
                    && written.elapsed() >= Duration::from_secs(1)
                    && deploying.now(&cluster.view());
                // Rewritten now and then even unchanged: a write that raced
                // a session's end may have left it on an expired lease.
                let heartbeat = written.elapsed() >= REPORT_HEARTBEAT;
                if changed || traffic_due || heartbeat {
                    written = std::time::Instant::now();
                    if let Ok(bytes) = serde_json::to_vec(&report) {
                        cluster.report(bytes);
                    }
                    last = Some(report);
                }
            }
        });
    }

    pub(crate) fn link_changed(&self, was: &Link, now: &Link) {
        match (was, now) {
            (Link::Down { .. }, Link::Down { .. }) | (Link::Up, Link::Up) => {}
            (_, Link::Down { error, .. }) => {
                let snap = self.snapshot.load();
                let detail = format!(
                    "lost the shared state store ({error}); serving the last applied state (generation {}, live {}) and refusing switches and deploys until it is back",
                    snap.generation, snap.live
                );
                tracing::warn!("{detail}");
                self.events.emit(Event::Cluster { ok: false, detail });
            }
            (Link::Down { .. }, Link::Up) => {
                let detail = "the shared state store is back; state read again".to_string();
                tracing::info!("{detail}");
                self.events.emit(Event::Cluster { ok: true, detail });
                self.report_due.notify_one();
            }
            _ => {}
        }
    }

    /// Applies the desired state another node wrote (or the operator put
    /// into etcd), unless it is what this node applied already.
    pub(crate) async fn apply_desired(self: &Arc<Self>, desired: &Versioned) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut state = self.state.lock().await;
        let seen = self
            .applied
            .load(Ordering::SeqCst)
            .max(self.rejected.load(Ordering::SeqCst));
        if desired.revision <= seen {
            return;
        }
        let next = serde_json::from_slice::<RouterState>(&desired.value)
            .map_err(|e| e.to_string())
            .and_then(|s| s.validate().map(|_| s).map_err(|e| e.to_string()));
        let next = match next {
            Ok(s) => s,
            Err(e) => {
                let detail = format!(
                    "the shared state at revision {} is not usable ({e}); still serving generation {}",
                    desired.revision, state.generation
                );
                tracing::error!("{detail}");
                self.events.emit(Event::Cluster { ok: false, detail });
                // Not retried until it changes again; not reported as
                // applied (this node is STALE), and a switch made here may
                // write over it (that is how it is repaired).
                self.rejected.store(desired.revision, Ordering::SeqCst);
                cluster.adopt(ROUTER_KEY, desired.revision);
                return;
            }
        };
        cluster.adopt(ROUTER_KEY, desired.revision);
        let current = self.snapshot.load_full();
        let config = self.config();
        let (from, to) = (state.live, next.live);
        let switched = from != to;
        let old_epoch = current.epochs[from].clone();
        let generation = next.generation;
        let pin = super::pin_of(&next, &config);
        let (maintenance, split) = (next.maintenance.clone(), next.split);
        let maintenance_changed = state.maintenance != next.maintenance;
        let ended_since = state.maintenance.as_ref().map(|m| m.since_ms);
        let split_changed = state.split != next.split;
        let mut snap = (*current).clone();
        snap.generation = generation;
        snap.live = to;
        snap.pin = pin;
        snap.maintenance = maintenance.map(Arc::new);
        snap.split = split;
        let stopped_shadow = if switched {
            snap.epochs[to].revive();
            old_epoch.retire(generation);
            let shadow = snap.shadow.take();
            if let Some(s) = &shadow {
                s.stop();
            }
            shadow
        } else {
            None
        };
        self.snapshot.store(Arc::new(snap));
        let record = next.history.last().cloned();
        *state = next;
        self.applied.store(desired.revision, Ordering::SeqCst);
        if let (true, Some(record)) = (switched, record) {
            self.announce_switch(&record, stopped_shadow.as_ref());
            tracing::info!(%from, %to, generation, revision = desired.revision, actor = %record.actor, "applied a switch from the shared state");
            self.spawn_drain(from, generation, old_epoch);
        }
        if maintenance_changed {
            let on = state.maintenance.is_some();
            self.events.emit(Event::Maintenance {
                on,
                detail: match &state.maintenance {
                    Some(m) => format!("maintenance on: {} (shared state)", m.message),
                    None => "maintenance off (shared state)".to_string(),
                },
                since_ms: state
                    .maintenance
                    .as_ref()
                    .map(|m| m.since_ms)
                    .or(ended_since),
            });
        }
        if split_changed {
            self.events.emit(Event::Weight {
                detail: match state.split {
                    Some(s) => format!(
                        "{:.2}% of live traffic to {} (shared state)",
                        s.basis_points as f64 / 100.0,
                        s.side
                    ),
                    None => "no weighted split (shared state)".into(),
                },
            });
        }
        drop(state);
        self.report_due.notify_one();
    }

    /// After this node wrote the state itself: that revision is applied.
    pub(crate) fn wrote_state(&self) {
        if let Some(c) = &self.cluster {
            self.applied.store(c.revision(ROUTER_KEY), Ordering::SeqCst);
            self.report_due.notify_one();
        }
    }

    /// The refusal while the store is out of reach (fail static).
    pub fn fail_static(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let v = c.view();
        let link = v.borrow().link.clone();
        match link {
            Link::Down { error, since_ms } => {
                let snap = self.snapshot.load();
                Some(format!(
                    "{} is unreachable ({error}; for {} s): this node keeps serving the last applied state (generation {}, live {}) and refuses changes until it is back",
                    c.describe(),
                    super::now().1.saturating_sub(since_ms) / 1000,
                    snap.generation,
                    snap.live
                ))
            }
            _ => None,
        }
    }

    pub(crate) fn node_report(&self) -> NodeReport {
        let snap = self.snapshot.load();
        let config = self.config();
        NodeReport {
            node: self
                .cluster
                .as_ref()
                .map(|c| c.node().to_string())
                .unwrap_or_default(),
            revision: self.applied.load(Ordering::SeqCst),
            generation: snap.generation,
            live: snap.live,
            healthy: Sides::from_fn(|s| {
                let pool = &snap.pools[s];
                format!("{}/{}", pool.healthy_count(), pool.upstreams.len())
            }),
            admin: self.listener_addr("admin").map(|a| {
                format!(
                    "{}://{a}",
                    if config.admin.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    }
                )
            }),
            started_ms: self.started_ms,
            windows: Sides::from_fn(|s| self.local_window(s)),
        }
    }

    pub(crate) fn update_peers(&self, view: &View) {
        let Some(me) = self.cluster.as_ref().map(|c| c.node().to_string()) else {
            return;
        };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peers = &mut *peers;
        let mut seen = BTreeMap::new();
        for (name, v) in view.under("nodes") {
            if name == me {
                continue;
            }
            if let Ok(r) = serde_json::from_slice::<NodeReport>(&v.value) {
                seen.insert(name.to_string(), (r.started_ms, r.windows));
            }
        }
        for (name, (started, windows)) in seen {
            peers.last.insert((name, started), windows);
        }
    }

    /// Live traffic the other nodes reported for `side` (zero alone).
    pub(crate) fn peer_window(&self, side: Side) -> Window {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .last
            .values()
            .fold(Window::default(), |sum, w| sum.plus(&w[side]))
    }
}
