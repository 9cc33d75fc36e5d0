//! The drain of a side that stopped being live: its requests, streams and
//! WebSockets run on until they finish or the drain deadline passes; then
//! what remains is cut and the side gets a fresh epoch, unless it went live
//! again meanwhile (the same epoch carries on) or a later switch owns it.

use super::{Change, PersistFailed, Router};
use crate::snapshot::Epoch;
use bluegreen_core::Side;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Router {
    pub(super) fn spawn_drain(self: &Arc<Self>, side: Side, generation: u64, epoch: Arc<Epoch>) {
        let router = self.clone();
        let timeout = self.config().switch.drain_timeout;
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
        let owned = epoch.clone();
        let cut = self
            .route_then(
                |_, current| {
                    if current.live == side
                        || owned.retired_by() != generation
                        || !Arc::ptr_eq(&current.epochs[side], &owned)
                    {
                        return Ok::<_, PersistFailed>(Change::none(None));
                    }
                    let left = owned.inflight();
                    Ok(Change::snapshot(
                        move |s| {
                            owned.cut_token().cancel();
                            s.epochs[side] = Epoch::new();
                        },
                        Some(left),
                    ))
                },
                |left| {
                    if left.is_some() {
                        self.drain_deadlines
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())[side] = None;
                    }
                    left
                },
            )
            .await;
        let Ok(Some(left)) = cut else { return };
        if left > 0 {
            tracing::warn!(%side, cut = left, "drain timeout passed; cut the old side's remaining requests and connections");
        } else {
            tracing::debug!(%side, "drain complete");
        }
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
}
