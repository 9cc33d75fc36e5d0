//! The nodes of a cluster: who is listed (members), who is lost, how far
//! each has applied the desired state (convergence), forgetting a lost one,
//! and the cluster as `status` shows it.

use super::*;

/// Where every node that joined is recorded, without a lease: a node that
/// goes away stays known (LOST) instead of vanishing with its report.
pub(crate) const MEMBERS_DIR: &str = "members";

/// A member's record: who, and when its report was last seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) node: String,
    pub(crate) last_seen_ms: u64,
}

/// The members without a report (lost), with when they were last seen.
pub(crate) fn lost_members(view: &View, me: &str) -> Vec<LostNode> {
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

impl Router {
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
    pub(crate) fn sort_nodes(&self, view: &View, revision: i64) -> (Vec<String>, Vec<String>) {
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
    pub(crate) fn keep_members(
        &self,
        cluster: &Arc<dyn Cluster>,
        seen: &mut BTreeMap<String, u64>,
    ) {
        let now = crate::control::now_ms();
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
