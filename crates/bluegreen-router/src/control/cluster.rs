//! Several router nodes on one shared store (etcd). The desired state lives
//! in the store; every node follows it through the store's watch and
//! applies a change with the same snapshot swap as a local switch, then
//! reports the revision it applied under `nodes/<node>`. A switch made here
//! waits until every node reports it (`converge`). When the store is out of
//! reach the node keeps serving what it applied last and refuses changes
//! (fail static); when it is back, the session reads everything again and
//! the node catches up without a restart.

use super::{ControlError, PersistFailed, Router};
use crate::events::Event;
use bluegreen_core::bake::Window;
use bluegreen_core::state::RouterState;
use bluegreen_core::{Side, Sides};
use bluegreen_store::cluster::{Cluster, Link, Versioned, View};
use bluegreen_store::ROUTER_KEY;
use serde::{Deserialize, Serialize};
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

/// Where every node that joined is recorded, without a lease: a node that
/// goes away stays known (LOST) instead of vanishing with its report.
const MEMBERS_DIR: &str = "members";

/// A member's record: who, and when its report was last seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    node: String,
    last_seen_ms: u64,
}

/// The members without a report (lost), with when they were last seen.
fn lost_members(view: &View, me: &str) -> Vec<LostNode> {
    let reporting: std::collections::BTreeSet<&str> = view.under("nodes").map(|(n, _)| n).collect();
    view.under(MEMBERS_DIR)
        .filter(|(n, _)| *n != me && !reporting.contains(n))
        .filter_map(|(_, v)| serde_json::from_slice::<Member>(&v.value).ok())
        .map(|m| LostNode {
            node: m.node,
            last_seen_ms: m.last_seen_ms,
        })
        .collect()
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

/// Key of the cluster-wide shadow run the deploy asks for.
const SHADOW_RUN: &str = "shadow.run";
/// Where each node publishes its part of that run: `shadow/<run>/<node>`.
const SHADOW_DIR: &str = "shadow";

/// Key of the shared session-cookie keys, relative to the prefix.
const SESSION_KEYS: &str = "session.keys";

/// The session keys every node signs and verifies with.
#[derive(Serialize, Deserialize)]
struct SessionKeys {
    /// Hex, 32 bytes.
    current: String,
    previous: Option<String>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (s.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl SessionKeys {
    fn parse(bytes: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let k: SessionKeys = serde_json::from_slice(bytes).ok()?;
        Some((unhex(&k.current)?, k.previous.as_deref().and_then(unhex)))
    }
}

/// The cluster's session keys: read from the shared store, or made by the
/// first node that finds none (a race with another first node is lost
/// gracefully: its keys are read instead). Blocking: called at start.
pub(super) fn shared_signer(
    store: &dyn bluegreen_store::StateStore,
) -> Result<crate::plane::signer::Signer, super::RouterError> {
    use crate::plane::signer::Signer;
    for _ in 0..3 {
        if let Some(bytes) = store.get(SESSION_KEYS)? {
            let (current, previous) =
                SessionKeys::parse(&bytes).ok_or_else(|| bluegreen_store::StoreError::Corrupt {
                    path: store.locate(SESSION_KEYS),
                    reason: "not {\"current\": \"<64 hex digits>\", \"previous\": ...}".into(),
                })?;
            return Ok(Signer::from_keys(&current, previous.as_deref()));
        }
        let fresh = Signer::fresh_key().map_err(|e| super::RouterError::Config(e.to_string()))?;
        let doc = serde_json::to_vec(&SessionKeys {
            current: hex(&fresh),
            previous: None,
        })
        .expect("keys serialise");
        match store.put(SESSION_KEYS, &doc) {
            Ok(()) => return Ok(Signer::from_keys(&fresh, None)),
            Err(bluegreen_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(super::RouterError::Config(
        "could not agree on the shared session keys with the other nodes".into(),
    ))
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

    fn link_changed(&self, was: &Link, now: &Link) {
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
    async fn apply_desired(self: &Arc<Self>, desired: &Versioned) {
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
                detail: format!(
                    "maintenance {} (shared state)",
                    if on { "on" } else { "off" }
                ),
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

    fn node_report(&self) -> NodeReport {
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

    fn update_peers(&self, view: &View) {
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

    /// Follows the cluster-wide shadow run: starts this node's part when
    /// the deploy (on another node, holding the deploy lock) asks for one,
    /// stops it when the deploy says the run is over (or its node lost the
    /// lock, or its time is up), and forgets it once the deploy removed it.
    /// The deploy node's own run, orphaned (its key gone or replaced while
    /// the run goes on: the lock was lost), is stopped too.
    async fn follow_shadow(self: &Arc<Self>, raw: Option<&Vec<u8>>) {
        use crate::taps::shadow::SharedShadow;
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let me = cluster.node().to_string();
        let asked: Option<SharedShadow> = raw.and_then(|b| serde_json::from_slice(b).ok());
        let holder = cluster
            .view()
            .borrow()
            .values
            .get(&bluegreen_store::cluster::lock_key("deploy"))
            .map(|l| bluegreen_store::cluster::lock_holder(&l.value));
        let now = super::now().1;
        let valid = asked.clone().filter(|a| {
            a.node != me && holder.as_deref() == Some(a.node.as_str()) && now < a.until_ms
        });
        let mine = self
            .shared_shadow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let forget = |router: &Self| {
            *router
                .shared_shadow
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        };
        match (&valid, &mine) {
            // This node's deploy run, its key gone or replaced.
            (_, Some((run, s, false))) => {
                if asked.as_ref().is_none_or(|a| a.run != *run) {
                    self.stop_shadow_run(s).await;
                    forget(self);
                }
                return;
            }
            (Some(a), Some((run, s, true))) if *run == a.run => {
                if !a.active && !s.stopped() {
                    self.stop_shadow_run(s).await;
                    self.report_due.notify_one();
                }
                return;
            }
            (_, Some((_, s, true))) => {
                // Over, or another run: this part ends (its last counts
                // were published with the run's key still there).
                self.stop_shadow_run(s).await;
                forget(self);
            }
            (_, None) => {}
        }
        let Some(a) = valid.filter(|a| a.active && a.live == self.live()) else {
            return;
        };
        let mut options = a.options.clone();
        options.duration_ms = Some(a.until_ms.saturating_sub(now));
        match self.start_shadow(options).await {
            Ok(s) => {
                tracing::info!(run = a.run, node = %a.node, "shadowing this node's live traffic for the deploy's cluster-wide run");
                *self.shared_shadow.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((a.run, s, true));
                self.report_due.notify_one();
            }
            Err(e) => {
                // Said once per run, not on every change of the view.
                if self.shadow_refused.swap(a.run, Ordering::SeqCst) != a.run {
                    tracing::warn!(run = a.run, error = %e, "this node cannot take part in the cluster's shadow run; the deploy judges without its traffic");
                }
            }
        }
    }

    /// Publishes this node's part of a followed run: every 2 s while it
    /// runs, and once more when it has stopped and compared what it sent.
    async fn publish_share(&self, sent: &mut Option<(std::time::Instant, bool)>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mine = self
            .shared_shadow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((run, s, true)) = mine else {
            *sent = None;
            return;
        };
        let share = s.share(run);
        let done = !share.running && share.in_flight == 0;
        let due = match *sent {
            None => true,
            Some((_, true)) => false,
            Some((at, false)) => done || at.elapsed() >= Duration::from_secs(2),
        };
        if !due {
            return;
        }
        let key = format!("{SHADOW_DIR}/{run}/{}", cluster.node());
        let bytes = share.to_json();
        match tokio::task::spawn_blocking(move || cluster.publish_own(&key, bytes)).await {
            Ok(Ok(())) => *sent = Some((std::time::Instant::now(), done)),
            Ok(Err(e)) => tracing::debug!(error = %e, "shadow share not published"),
            Err(_) => {}
        }
    }

    /// The deploy's shadow run on this node becomes a cluster-wide one
    /// (`active`), or ends (`!active`: the other nodes stop and publish
    /// their last counts). Written only while this node holds the deploy
    /// lock. Nothing to do alone.
    pub async fn share_shadow(
        &self,
        run: u64,
        shadow: &Arc<crate::taps::shadow::Shadow>,
        active: bool,
        until_ms: u64,
    ) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let doc = crate::taps::shadow::SharedShadow {
            run,
            options: shadow.options.clone(),
            live: self.live(),
            active,
            node: cluster.node().to_string(),
            until_ms,
        };
        let bytes = serde_json::to_vec(&doc).expect("serialises");
        let put = tokio::task::spawn_blocking(move || {
            cluster.publish_as("deploy", SHADOW_RUN, Some(bytes))
        })
        .await;
        match put {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                "not the deploy lock's holder any more: the other nodes were not asked to shadow"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not ask the other nodes to shadow"),
            Err(_) => {}
        }
        // After the key: the follow loop never takes this run for an orphan.
        *self.shared_shadow.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((run, shadow.clone(), false));
    }

    /// The deploy is done with the cluster-wide run: its key and every
    /// node's part are removed.
    pub async fn end_shared_shadow(&self) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cluster.clear_as("deploy", SHADOW_DIR);
            cluster.publish_as("deploy", SHADOW_RUN, None)
        })
        .await;
        *self.shared_shadow.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The other nodes' parts of the cluster-wide run `run`, by node.
    pub fn shadow_shares(&self, run: u64) -> Vec<(String, crate::taps::shadow::ShadowShare)> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Vec::new();
        };
        let dir = format!("{SHADOW_DIR}/{run}");
        let view = cluster.view();
        let v = view.borrow();
        v.under(&dir)
            .filter_map(|(node, value)| {
                serde_json::from_slice(&value.value)
                    .ok()
                    .map(|s| (node.to_string(), s))
            })
            .collect()
    }

    /// Waits until every node listed with a part in `run` has stopped and
    /// compared what it sent, up to `limit`.
    pub async fn shadow_settled(&self, run: u64, limit: Duration) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut view = cluster.view();
        loop {
            let busy = self
                .shadow_shares(run)
                .iter()
                .any(|(_, s)| s.running || s.in_flight > 0);
            if !busy {
                return;
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Waits until every live node applied `revision`, up to the store's
    /// `converge_timeout`; says which nodes had not.
    pub async fn converge(&self, revision: i64) -> Option<Convergence> {
        let cluster = self.cluster.clone()?;
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + cluster.converge_timeout();
        let mut view = cluster.view();
        // Every node listed when the switch was made is waited for, even if
        // its report vanishes meanwhile (a session renewed, a node dying):
        // only its report with this revision counts.
        let expected: Vec<String> = view
            .borrow()
            .under("nodes")
            .map(|(n, _)| n.to_string())
            .collect();
        loop {
            let (synced, stale) = {
                let v = view.borrow_and_update();
                let (synced, mut stale) = self.sort_nodes(&v, revision);
                for name in &expected {
                    if !synced.contains(name) && !stale.contains(name) {
                        stale.push(name.clone());
                    }
                }
                (synced, stale)
            };
            let done = stale.is_empty();
            let timed_out = tokio::time::Instant::now() >= deadline;
            if done || timed_out {
                // A LOST node has not applied it either: not waited for (it
                // cannot answer), but never counted as done.
                let mut stale = stale;
                for l in lost_members(&view.borrow(), self.cluster.as_ref()?.node()) {
                    if !stale.contains(&l.node) && !synced.contains(&l.node) {
                        stale.push(format!("{} (LOST)", l.node));
                    }
                }
                return Some(Convergence {
                    revision,
                    synced,
                    stale,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// (synced, stale) node names for `revision`; this node counts by what
    /// it applied, the others by their reports.
    fn sort_nodes(&self, view: &View, revision: i64) -> (Vec<String>, Vec<String>) {
        let me = self
            .cluster
            .as_ref()
            .map(|c| c.node().to_string())
            .unwrap_or_default();
        let mut synced = Vec::new();
        let mut stale = Vec::new();
        if self.applied.load(Ordering::SeqCst) >= revision {
            synced.push(me.clone());
        } else {
            stale.push(me.clone());
        }
        for (name, v) in view.under("nodes") {
            if name == me {
                continue;
            }
            match serde_json::from_slice::<NodeReport>(&v.value) {
                Ok(r) if r.revision >= revision => synced.push(name.to_string()),
                _ => stale.push(name.to_string()),
            }
        }
        (synced, stale)
    }

    /// Members: each node seen reporting is remembered with the time; one
    /// that stopped has its record's last-seen time brought up to date
    /// (once), and one gone longer than `forget_after` is removed.
    fn keep_members(&self, cluster: &Arc<dyn Cluster>, seen: &mut BTreeMap<String, u64>) {
        let now = super::now_ms();
        let forget_after = self
            .config()
            .state
            .etcd
            .as_ref()
            .map(|e| e.forget_after)
            .unwrap_or(Duration::from_secs(24 * 3600));
        let (lost, up) = {
            let view = cluster.view();
            let v = view.borrow();
            for (n, _) in v.under("nodes") {
                seen.insert(n.to_string(), now);
            }
            (lost_members(&v, cluster.node()), v.link == Link::Up)
        };
        if !up {
            return;
        }
        for l in lost {
            let key = format!("{MEMBERS_DIR}/{}", l.node);
            let write = match seen.get(&l.node) {
                Some(&at) if at > l.last_seen_ms => Some(Some(Member {
                    node: l.node.clone(),
                    last_seen_ms: at,
                })),
                _ if now.saturating_sub(l.last_seen_ms) > forget_after.as_millis() as u64 => {
                    tracing::info!(node = %l.node, "a node lost for longer than forget_after is forgotten");
                    Some(None)
                }
                _ => None,
            };
            if let Some(record) = write {
                seen.remove(&l.node);
                let c = cluster.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = c.put_record(&key, record.and_then(|r| serde_json::to_vec(&r).ok()));
                });
            }
        }
    }

    /// `bluegreen cluster forget NODE`: a LOST node is no longer listed.
    /// Refused for a node that reports (it is alive).
    pub async fn forget_node(&self, node: &str) -> Result<(), ControlError> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(ControlError::refused(
                "not_lost",
                "there is no cluster: the state is not shared (state.backend)",
            ));
        };
        let known = {
            let view = cluster.view();
            let v = view.borrow();
            if v.under("nodes").any(|(n, _)| n == node) {
                return Err(ControlError::refused(
                    "not_lost",
                    format!("node {node} is reporting: it is part of the cluster, not lost"),
                ));
            }
            let known = v.under(MEMBERS_DIR).any(|(n, _)| n == node);
            known
        };
        if !known {
            return Err(ControlError::refused(
                "not_lost",
                format!("no node {node} is known to the cluster"),
            ));
        }
        let key = format!("{MEMBERS_DIR}/{node}");
        tokio::task::spawn_blocking(move || cluster.put_record(&key, None))
            .await
            .map_err(|e| ControlError::Persist(e.to_string()))?
            .map_err(|e| PersistFailed::of(e).into())
    }

    /// The cluster as this node sees it, for `status`.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        let cluster = self.cluster.as_ref()?;
        let view = cluster.view();
        let v = view.borrow();
        let desired = v.values.get(ROUTER_KEY).map_or(0, |d| d.revision);
        let me = cluster.node();
        let mut nodes: Vec<NodeStatus> = v
            .under("nodes")
            .filter(|(name, _)| *name != me)
            .filter_map(|(_, value)| serde_json::from_slice::<NodeReport>(&value.value).ok())
            .chain(std::iter::once(self.node_report()))
            .map(|r| NodeStatus {
                synced: r.revision >= desired,
                node: r.node,
                generation: r.generation,
                revision: r.revision,
                live: r.live,
                healthy: r.healthy,
                admin: r.admin,
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let (down_since_ms, error) = match &v.link {
            Link::Down { since_ms, error } => (Some(*since_ms), Some(error.clone())),
            _ => (None, None),
        };
        let lost = lost_members(&v, me);
        Some(ClusterStatus {
            lost,
            node: me.to_string(),
            store: cluster.describe(),
            connected: v.link == Link::Up,
            down_since_ms,
            error,
            revision: desired,
            nodes,
            deploy_lock: v
                .values
                .get(&bluegreen_store::cluster::lock_key("deploy"))
                .map(|l| bluegreen_store::cluster::lock_holder(&l.value)),
        })
    }
}
