//! A started router: its listeners, admin API and pipeline, and how it
//! stops. Below `serve` (which starts one), `reload` and `upgrade` (which
//! act on one).

use crate::server::sockets::Sockets;
use bluegreen_core::config::deploy::DeployMethod;
use bluegreen_pipeline::Pipeline;
use bluegreen_router::Router;
use bluegreen_store::StateStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A started router with its listeners.
pub struct Running {
    pub router: Arc<Router>,
    pub pipeline: Option<Arc<Pipeline>>,
    pub proxy: SocketAddr,
    pub preview: Option<SocketAddr>,
    /// HTTPS live and preview listeners, with a `[tls]` table.
    pub https: Option<SocketAddr>,
    pub https_preview: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub(crate) stop: CancellationToken,
    pub(crate) listeners: Vec<JoinHandle<()>>,
    pub(crate) admin_task: JoinHandle<()>,
    pub(crate) health: TaskTracker,
    /// What a new process gets in a handover.
    pub sockets: Sockets,
    pub store: Arc<dyn StateStore>,
}

impl Running {
    /// Stops accepting, drains in-flight requests and upgraded connections
    /// up to the drain timeout, then stops.
    pub async fn shutdown(mut self, handed_over: bool) {
        let started = Instant::now();
        // Our duplicates of the listening sockets go first: once the
        // listeners stop, nothing here may hold a socket open (a new
        // process has its own; without one, connections must be refused,
        // not queued where nobody accepts).
        drop(std::mem::take(&mut self.sockets));
        if handed_over {
            self.router.set_handed_over();
        }
        // Held requests are answered now rather than left to wait out
        // their timeout while the drain runs.
        if self.router.paused().is_some() {
            let _ = self.router.resume().await;
        }
        let grace = self.router.config().switch.drain_timeout;
        self.stop.cancel();
        let _ = self.router.stop_shadow().await;
        for l in self.listeners {
            let _ = l.await;
        }
        let open = self
            .router
            .close_tunnels(grace.saturating_sub(started.elapsed()))
            .await;
        self.health.wait().await;
        // Ends event streams, so the admin API's graceful shutdown can finish.
        self.router.shutdown_token().cancel();
        let _ = self.admin_task.await;
        if let Some(p) = &self.pipeline {
            // After a handover the apps belong to the new process.
            let stop_apps = !handed_over
                && matches!(&self.router.config().deploy, Some(d) if matches!(&d.method, DeployMethod::Supervisor(s) if s.stop_on_exit));
            p.shutdown(stop_apps).await;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            upgraded_at_stop = open,
            "router stopped"
        );
    }
}
