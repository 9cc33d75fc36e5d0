//! The plane: what serving a request needs, and nothing that changes the
//! routing. The request path, the taps, the health checks, the listeners
//! and the client connections take an `Arc<Plane>`; only the control
//! (`control::Router`, which owns one) plans, persists and swaps snapshots.
//! Everything here is read on the request path without a lock, but for the
//! listener ports and the health tasks, which are read at startup.

pub mod clients;
pub mod fresh;
pub mod ids;
pub mod signer;

use crate::events::Events;
use crate::snapshot::Snapshot;
use crate::tls::certs::CertStore;
use crate::tls::failures::HandshakeFailures;
use arc_swap::ArcSwap;
use bluegreen_core::config::Config;
use bluegreen_core::Side;
use clients::{ClientCount, ClientGauge, ListenerKind, DRAIN_LINGER};
use fresh::Freshness;
use ids::RequestIds;
use signer::Signer;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What requests need: the snapshot, ids, tunnels, shutdown, events,
/// gauges, the cookie signer and the certificates.
pub struct Plane {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) ids: RequestIds,
    /// Upgraded connections, which hyper no longer tracks.
    pub(crate) tunnels: TaskTracker,
    /// Cancelled when the router stops; cuts what is still open.
    pub(crate) shutdown: CancellationToken,
    /// Swapped whole by a reload.
    pub(crate) config: ArcSwap<Config>,
    pub(crate) listeners: Mutex<BTreeMap<String, SocketAddr>>,
    /// State changes, for the event stream.
    pub events: Events,
    /// Open client connections per listener (live, preview).
    pub(crate) clients: [Arc<ClientGauge>; 2],
    /// Client TLS handshakes that failed (edge and admin listeners).
    pub tls_handshake_failures: HandshakeFailures,
    /// The TLS certificates, when there is a `[tls]` table.
    pub(crate) certificates: OnceLock<Arc<CertStore>>,
    /// Set when a new process has taken over: draining connections wait a
    /// moment for their next request (answered with `Connection: close`)
    /// instead of closing at once, since that process serves the retry.
    pub(crate) handed_over: AtomicBool,
    /// Signs session and preview cookies (key in the state dir).
    pub(crate) signer: Arc<Signer>,
    /// Requests kept on the old side by their session, per side.
    pub(crate) pinned: [AtomicU64; 2],
    /// Where health check loops run (a reload adds loops for new upstreams).
    pub(crate) health_tasks: Mutex<Option<(TaskTracker, CancellationToken)>>,
    /// With a shared store: whether this node may have missed a switch
    /// while it did not run.
    pub(crate) freshness: Option<Arc<Freshness>>,
}

impl Plane {
    pub(crate) fn new(
        snapshot: Snapshot,
        config: Config,
        signer: Arc<Signer>,
        freshness: Option<Arc<Freshness>>,
    ) -> Plane {
        Plane {
            snapshot: ArcSwap::from_pointee(snapshot),
            ids: RequestIds::new(),
            tunnels: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            config: ArcSwap::from_pointee(config),
            listeners: Mutex::new(BTreeMap::new()),
            events: Events::default(),
            clients: Default::default(),
            tls_handshake_failures: Default::default(),
            certificates: OnceLock::new(),
            handed_over: AtomicBool::new(false),
            signer,
            pinned: Default::default(),
            health_tasks: Mutex::new(None),
            freshness,
        }
    }

    /// The validated config the router runs with (the last reloaded).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
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

    /// The address a bound listener ended up on.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// The port a bound listener ended up on.
    pub fn listener_port(&self, name: &str) -> Option<u16> {
        self.listener_addr(name).map(|a| a.port())
    }

    /// The TLS certificates in use, shown in status and metrics.
    pub fn set_certificates(&self, store: Arc<CertStore>) {
        let _ = self.certificates.set(store);
    }

    /// The certificate store (its ACME challenges are answered by the
    /// plain listener).
    pub fn cert_store(&self) -> Option<Arc<CertStore>> {
        self.certificates.get().cloned()
    }

    /// Where health check loops run, once they were started.
    pub(crate) fn set_health_tasks(&self, tracker: TaskTracker, stop: CancellationToken) {
        *self.health_tasks.lock().unwrap_or_else(|p| p.into_inner()) = Some((tracker, stop));
    }

    pub(crate) fn health_tasks(&self) -> Option<(TaskTracker, CancellationToken)> {
        self.health_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long an idle client connection stays open at a drain for its
    /// next request (answered with `Connection: close`). After a handover,
    /// the whole drain time (less a moment, so the close is ours and not
    /// the exit's): a client that pauses a few seconds between requests
    /// sends its next one on an open connection, never into a close (as
    /// Envoy's gradual drain). At a plain stop, a moment: nobody would serve
    /// its retry.
    pub fn drain_linger(&self) -> Duration {
        if !self.handed_over() {
            return DRAIN_LINGER;
        }
        self.config()
            .switch
            .drain_timeout
            .saturating_sub(Duration::from_millis(500))
            .max(DRAIN_LINGER)
    }

    /// A new process serves now; this one only drains.
    pub fn set_handed_over(&self) {
        self.handed_over.store(true, Ordering::SeqCst);
    }

    /// True once a new process serves (see [`Plane::set_handed_over`]).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst)
    }

    /// Holds a live request while this node doubts its state (several
    /// nodes only); true when it waited, so the caller routes afresh.
    pub async fn wait_until_fresh(&self) -> bool {
        match &self.freshness {
            Some(f) => f.wait().await,
            None => false,
        }
    }

    /// Token cancelled when the router shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Closes idle upstream connections unused for `age`, on both sides; how many.
    pub fn purge_upstream_conns(&self, age: Duration) -> usize {
        let snap = self.snapshot.load();
        [Side::Blue, Side::Green]
            .iter()
            .flat_map(|&side| snap.pools[side].upstreams.iter())
            .map(|u| u.conns.purge(age))
            .sum()
    }

    /// Parked client connections on every listener.
    pub fn parked_clients(&self) -> usize {
        self.clients
            .iter()
            .map(|g| g.parked.load(Ordering::Relaxed))
            .sum()
    }

    /// Open client connections of a listener, and how many of them are
    /// parked (idle keep-alive, holding no buffers).
    pub fn client_connections(&self, kind: ListenerKind) -> ClientCount {
        let g = &self.clients[kind as usize];
        let parked = g.parked.load(Ordering::Relaxed);
        let tls_idle = g
            .tls_open
            .load(Ordering::Relaxed)
            .saturating_sub(g.tls_busy.load(Ordering::Relaxed));
        ClientCount {
            open: g.open.load(Ordering::Relaxed),
            parked,
            idle: parked + tls_idle,
        }
    }
}
