//! A node that may have missed a switch does not serve live traffic until it
//! has checked. With several nodes, a switch waits for the nodes that are
//! listed; a node frozen past its lease (SIGSTOP, a VM paused, a stalled
//! host) is no longer listed, so the switch goes on without it. When it
//! wakes, its snapshot may be older than the last acknowledged switch.
//!
//! A heartbeat ticks every 100 ms. A gap of more than a second means this
//! process did not run (or ran starved) for that long: until it has read
//! the shared state again and applied anything newer, live requests wait
//! (`converge_timeout` at most), then go by the fresh snapshot. A request
//! that runs before the heartbeat noticed sees the gap itself. When etcd is
//! out of reach the check gives up and the node serves what it has (fail
//! static, as before).

use super::Router;
use bluegreen_core::state::RouterState;
use bluegreen_store::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::plane::fresh::{Freshness, GAP};

/// How often the heartbeat ticks.
const TICK: Duration = Duration::from_millis(100);

impl Router {
    /// Starts the heartbeat (with a shared store), until `stop`; and the
    /// checks live requests ask for (`Freshness::wait`), until the router
    /// shuts down: a draining process still answers requests after `stop`,
    /// and with no heartbeat each of them finds the node in doubt, so the
    /// check must still run for them (else each would wait out the limit).
    pub(super) fn spawn_freshness(self: &Arc<Self>, stop: CancellationToken) {
        let Some(f) = self.freshness.clone() else {
            return;
        };
        f.beat_ms.store(f.now_ms(), Ordering::Relaxed);
        let (router, asked) = (self.clone(), f.clone());
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = asked.asked() => router.check(),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        let router = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let now = f.now_ms();
                let gap = now.saturating_sub(f.beat_ms.load(Ordering::Relaxed));
                if gap > GAP.as_millis() as u64 {
                    tracing::warn!(gap_ms = gap, "this process did not run for a while: checking the shared state before serving live traffic");
                    if f.begin_doubt() {
                        router.check();
                    }
                }
                f.beat_ms.store(now, Ordering::Relaxed);
            }
        });
    }

    /// Checks the shared state (a doubt was just begun), then ends the
    /// doubt and lets the waiting requests go.
    fn check(self: &Arc<Self>) {
        let Some(f) = self.freshness.clone() else {
            return;
        };
        let router = self.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(router.check_limit(), router.catch_up()).await;
            match outcome {
                Ok(Ok(())) => tracing::info!("shared state checked: serving live traffic"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not check the shared state; serving the last applied state (fail static)"),
                Err(_) => tracing::warn!("the shared state was not confirmed in time; serving the last applied state (fail static)"),
            }
            f.end_doubt();
        });
    }

    /// Reads the routing state from the store and waits until this node
    /// has applied it (or something newer).
    async fn catch_up(self: &Arc<Self>) -> Result<(), CatchUpError> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(());
        };
        let read = tokio::task::spawn_blocking(move || cluster.peek(bluegreen_store::ROUTER_KEY))
            .await
            .map_err(|e| CatchUpError::Task(e.to_string()))??;
        let Some(bytes) = read else {
            return Ok(());
        };
        let desired: RouterState =
            serde_json::from_slice(&bytes).map_err(|e| CatchUpError::Unusable(e.to_string()))?;
        while self.snapshot.load().generation < desired.generation {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The longest a check of the shared state may take: a switch's wait.
    fn check_limit(&self) -> Duration {
        self.cluster
            .as_ref()
            .map(|c| c.converge_timeout())
            .unwrap_or(Duration::from_secs(5))
    }
}

/// Why the shared state could not be checked (the node then serves its
/// last applied state).
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the read did not finish: {0}")]
    Task(String),
    #[error("the shared routing state is not usable: {0}")]
    Unusable(String),
}
