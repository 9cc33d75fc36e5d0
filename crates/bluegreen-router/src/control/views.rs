//! What the API, the metrics and the pipeline read from the router: the
//! history, the taps, each side's traffic and health, certificates, ACME.

use super::*;

impl Router {
    /// The ACME loop, shown in status.
    pub fn set_acme(&self, acme: Arc<crate::tls::acme::Acme>) {
        let _ = self.acme.set(acme);
    }

    /// Opens the notify outbox (what a previous run left waits there) and
    /// starts listening and delivering, until `stop`.
    pub async fn start_notifier(
        &self,
        stop: CancellationToken,
        rx: Option<tokio::sync::broadcast::Receiver<crate::events::Event>>,
    ) -> Result<(), String> {
        let config = self.config();
        let node = match &config.state.etcd {
            Some(e) => e.node.clone(),
            None => tokio::fs::read_to_string("/proc/sys/kernel/hostname")
                .await
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "bluegreen".into()),
        };
        let n = crate::notify::Notifier::open(self.plane.clone(), self.store.clone(), node).await?;
        n.spawn(stop, rx);
        let _ = self.notifier.set(n);
        Ok(())
    }

    /// The notifier, once started.
    pub fn notifier(&self) -> Option<&Arc<crate::notify::Notifier>> {
        self.notifier.get()
    }

    /// Where ACME stands, when configured.
    pub fn acme(&self) -> Option<crate::tls::acme::AcmeState> {
        self.acme.get().map(|a| a.state())
    }

    /// What each TLS certificate in use says about itself.
    pub fn certificates(&self) -> Vec<crate::tls::CertInfo> {
        self.certificates
            .get()
            .map(|c| c.infos())
            .unwrap_or_default()
    }

    /// Switch history, oldest first.
    pub async fn history(&self) -> Vec<SwitchRecord> {
        self.state.lock().await.history.clone()
    }

    /// Switches since this process started, by kind (`switch`, `rollback`).
    pub fn switch_counts(&self) -> BTreeMap<&'static str, u64> {
        self.switch_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Live traffic the side has received: on this node since it started,
    /// plus what the other nodes of a cluster reported (the bake and the
    /// gates judge the whole cluster).
    pub fn live_window(&self, side: Side) -> bluegreen_core::bake::Window {
        match &self.cluster {
            None => self.local_window(side),
            Some(_) => self.local_window(side).plus(&self.peer_window(side)),
        }
    }

    /// Live traffic of the side on this node alone.
    pub fn local_window(&self, side: Side) -> bluegreen_core::bake::Window {
        self.snapshot.load().pools[side].live_stats.window()
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

    /// True when the live side has an upstream that is not known to be down.
    pub fn ready(&self) -> bool {
        let snap = self.snapshot.load();
        snap.pools[snap.live]
            .upstreams
            .iter()
            .any(|u| u.health() != Health::Unhealthy)
    }
}
