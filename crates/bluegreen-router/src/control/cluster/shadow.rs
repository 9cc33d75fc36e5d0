//! A cluster-wide shadow run: every node mirrors its own live traffic and
//! publishes its share; the node running the deploy judges them all.

use super::*;

/// Key of the cluster-wide shadow run the deploy asks for.
pub(crate) const SHADOW_RUN: &str = "shadow.run";
/// Where each node publishes its part of that run: `shadow/<run>/<node>`.
pub(crate) const SHADOW_DIR: &str = "shadow";

impl Router {
    /// Follows the cluster-wide shadow run: starts this node's part when
    /// the deploy (on another node, holding the deploy lock) asks for one,
    /// stops it when the deploy says the run is over (or its node lost the
    /// lock, or its time is up), and forgets it once the deploy removed it.
    /// The deploy node's own run, orphaned (its key gone or replaced while
    /// the run goes on: the lock was lost), is stopped too.
    pub(crate) async fn follow_shadow(self: &Arc<Self>, raw: Option<&Vec<u8>>) {
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
        let now = crate::control::now().1;
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
    pub(crate) async fn publish_share(&self, sent: &mut Option<(std::time::Instant, bool)>) {
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
}
