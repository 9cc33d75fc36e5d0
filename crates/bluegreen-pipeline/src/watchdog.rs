//! The bake's watchdog on every node. While a deploy bakes, the node
//! holding the deploy lock judges the whole cluster's traffic; when that
//! node is gone, nobody would judge until its lease ends and another node
//! takes the deploy over. Meanwhile every node watches its own traffic on
//! the new side against the bake's absolute limits and, on a breach, rolls
//! back through the store: one conditional write on the state's revision,
//! so exactly one node wins and the others apply it from their watch. It
//! never passes anything: the node that takes the deploy over ends it.
//!
//! The holder shows it is there with a beat (`deploy.beat`, written as the
//! lock's holder every [`BEAT`] while it bakes); a lock whose beat has not
//! moved for [`GONE_AFTER`] has no live holder. A holder only slow to
//! write (etcd under load) may be taken for gone; a node acts on that only
//! with a breach of the absolute limits on its own traffic, its rollback
//! is the same single conditional write, and the holder's bake then ends
//! rolled back naming that node.

use crate::shared::DEPLOY_LOCK;
use crate::{now_ms, Pipeline};
use bluegreen_core::bake::{absolute_breach, Breach, Window};
use bluegreen_core::deploy::{DeployBook, DeployRecord, Step, StepState};
use bluegreen_core::rollback::{self, RollbackPlan};
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_router::SwitchError;
use bluegreen_store::cluster::{lock_key, Cluster, Link, View};
use bluegreen_store::DEPLOYS_KEY;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Key of the baking holder's beat.
const BEAT_KEY: &str = "deploy.beat";
/// Key of the last watchdog rollback: which node, which deploy, why.
pub(crate) const RECORD_KEY: &str = "watchdog";
/// How often the baking holder writes its beat (a small key, a revision each).
const BEAT: Duration = Duration::from_millis(250);
/// A beat that has not moved this long: the holder is gone (four beats
/// missed, so a slow etcd write is not taken for a dead node).
const GONE_AFTER: Duration = Duration::from_secs(1);
/// How often a node looks at its own traffic.
const LOOK: Duration = Duration::from_millis(100);

/// What the node that won the rollback wrote, for the deploy's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WatchdogRecord {
    pub deploy_id: u64,
    pub node: String,
    /// The deploy lock's holder that was gone.
    pub holder: String,
    pub breach: Breach,
    pub at_ms: u64,
}

/// The holder's beat while its bake runs; stops when dropped.
pub(crate) struct Beat(Option<tokio::task::JoinHandle<()>>);

impl Drop for Beat {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Starts the beat of this node's bake (nothing without a cluster). Written
/// only while this process holds the deploy lock.
pub(crate) fn beat(p: &Pipeline) -> Beat {
    let Some(cluster) = p.cluster.clone() else {
        return Beat(None);
    };
    Beat(Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let c = cluster.clone();
            let value = format!("{}@{}", c.node(), now_ms()).into_bytes();
            let wrote = tokio::task::spawn_blocking(move || {
                c.publish_as(DEPLOY_LOCK, BEAT_KEY, Some(value))
            })
            .await;
            match wrote {
                Ok(Ok(true)) => {}
                // Not the holder any more: the beat ends with the lock.
                Ok(Ok(false)) => return,
                Ok(Err(e)) => tracing::debug!(error = %e, "the bake's beat was not written"),
                Err(_) => return,
            }
        }
    })))
}

/// A deploy in its bake, as the shared book says (read again only when the
/// book's revision changed).
#[derive(Default)]
struct Baking {
    revision: i64,
    deploy: Option<DeployRecord>,
}

impl Baking {
    fn now(&mut self, view: &View) -> Option<&DeployRecord> {
        let book = view.values.get(DEPLOYS_KEY)?;
        if book.revision != self.revision {
            self.revision = book.revision;
            self.deploy = serde_json::from_slice::<DeployBook>(&book.value)
                .ok()
                .and_then(|b| b.current)
                .filter(|d| !d.is_finished() && d.step(Step::Bake).state == StepState::Running);
        }
        self.deploy.as_ref()
    }
}

/// One deploy's watch on this node: its own recent traffic on the new
/// side, and when the holder last showed it is there.
struct Watch {
    deploy_id: u64,
    samples: VecDeque<(Instant, Window)>,
    /// The lock's and the beat's revisions as last seen, and since when.
    holder_seen: (Option<i64>, Option<i64>),
    since: Instant,
    /// Rolled back (or tried): nothing more to do for this deploy.
    done: bool,
}

impl Watch {
    fn new(deploy_id: u64, holder: (Option<i64>, Option<i64>)) -> Watch {
        Watch {
            deploy_id,
            samples: VecDeque::new(),
            holder_seen: holder,
            since: Instant::now(),
            done: false,
        }
    }

    /// The holder is gone: no lock at all, or its beat stood still.
    fn holder_gone(&mut self, holder: (Option<i64>, Option<i64>)) -> bool {
        if holder != self.holder_seen {
            self.holder_seen = holder;
            self.since = Instant::now();
        }
        holder.0.is_none() || self.since.elapsed() >= GONE_AFTER
    }

    /// This node's traffic over the last `span` (or what it has of it).
    fn recent(&mut self, now: Window, span: Duration) -> Window {
        let at = Instant::now();
        self.samples.push_back((at, now.clone()));
        while self.samples.len() > 1 && at.duration_since(self.samples[1].0) >= span {
            self.samples.pop_front();
        }
        now.since(&self.samples[0].1)
    }
}

/// Watches the bakes of deploys running on other nodes (cluster only).
pub(crate) fn spawn(p: &Arc<Pipeline>, cluster: Arc<dyn Cluster>, stop: CancellationToken) {
    let p = p.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LOOK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let view = cluster.view();
        let mut baking = Baking::default();
        let mut watch: Option<Watch> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let (deploy, holder, holder_name, up) = {
                let v = view.borrow();
                let lock = v.values.get(&lock_key(DEPLOY_LOCK));
                (
                    baking.now(&v).cloned(),
                    (
                        lock.map(|l| l.revision),
                        v.values.get(BEAT_KEY).map(|b| b.revision),
                    ),
                    lock.map(|l| bluegreen_store::cluster::lock_holder(&l.value)),
                    v.link == Link::Up,
                )
            };
            // Only a bake on another node, with the new side live here.
            let Some(d) = deploy.filter(|d| {
                !p.runs_here() && !cluster.holds(DEPLOY_LOCK) && p.router.live() == d.target
            }) else {
                watch = None;
                continue;
            };
            let w = match &mut watch {
                Some(w) if w.deploy_id == d.id => w,
                _ => watch.insert(Watch::new(d.id, holder)),
            };
            let recent = w.recent(p.router.local_window(d.target), p.config().bake.interval);
            if w.done || !up || !w.holder_gone(holder) {
                continue;
            }
            let Some(breach) = absolute_breach(&recent, &p.config().bake.thresholds) else {
                continue;
            };
            w.done = true;
            let holder = holder_name.unwrap_or_else(|| "none".into());
            roll_back(&p, &cluster, &d, breach, &holder).await;
        }
    });
}

/// Rolls the deploy back from this node, by the bake's rollback plan and
/// under this node's fence; a conflict means another node won.
async fn roll_back(
    p: &Arc<Pipeline>,
    cluster: &Arc<dyn Cluster>,
    d: &DeployRecord,
    breach: Breach,
    holder: &str,
) {
    let node = cluster.node().to_string();
    // A peek, not a read this node's next write of the book would be
    // conditional on: the book stays the holder's to write.
    let c = cluster.clone();
    let read = tokio::task::spawn_blocking(move || c.peek(DEPLOYS_KEY)).await;
    let book = match read {
        Ok(Ok(Some(bytes))) => match serde_json::from_slice::<DeployBook>(&bytes) {
            Ok(b) => crate::shared::normalized(b),
            Err(_) => return,
        },
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "watchdog: cannot read the deploy book; not rolling back from here");
            return;
        }
    };
    let _fence = p.fence.lock().await;
    let still = book
        .current
        .as_ref()
        .is_some_and(|c| c.id == d.id && !c.is_finished());
    if !still || p.router.live() != d.target || p.runs_here() {
        return;
    }
    let side = match rollback::plan_bake(&book, d) {
        RollbackPlan::Switch { side, .. } => side,
        other => {
            // A re-deploy needs the deploy lock: the node that takes the
            // deploy over judges and decides.
            tracing::warn!(plan = ?other, "watchdog: {} on this node, but the rollback is no instant switch; left to the node that takes the deploy over", breach.summary);
            return;
        }
    };
    let reason = format!(
        "deploy #{}: {} on node {node}'s own traffic, while the deploy lock's holder ({holder}) was gone",
        d.id, breach.summary
    );
    let switched = p
        .router
        .switch_here(SwitchRequest {
            to: side,
            kind: SwitchKind::Rollback,
            forced: true,
            actor: format!("watchdog on node {node}"),
            reason: reason.clone(),
        })
        .await;
    match switched {
        Ok(o) if o.changed => {
            tracing::error!(id = d.id, %node, %holder, "watchdog rolled back to {side}: {reason}");
            let record = WatchdogRecord {
                deploy_id: d.id,
                node,
                holder: holder.to_string(),
                breach,
                at_ms: now_ms(),
            };
            let c = cluster.clone();
            let bytes = serde_json::to_vec(&record).ok();
            let wrote = tokio::task::spawn_blocking(move || c.put_record(RECORD_KEY, bytes)).await;
            if let Ok(Err(e)) = wrote {
                tracing::warn!(error = %e, "watchdog: the rollback's record was not written; the state's switch record says it");
            }
        }
        Ok(_) => {}
        Err(SwitchError::Conflict(_)) => {
            tracing::info!(id = d.id, "watchdog: another node rolled back first")
        }
        Err(e) => tracing::warn!(id = d.id, error = %e, "watchdog: the rollback failed"),
    }
}

/// The watchdog's rollback of deploy `id`, as the node that won wrote it.
pub(crate) fn record_of(cluster: &Arc<dyn Cluster>, id: u64) -> Option<WatchdogRecord> {
    let view = cluster.view();
    let v = view.borrow();
    v.values
        .get(RECORD_KEY)
        .and_then(|r| serde_json::from_slice::<WatchdogRecord>(&r.value).ok())
        .filter(|r| r.deploy_id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(n: u64, errors: u64) -> Window {
        Window {
            requests: n,
            errors,
            ..Window::default()
        }
    }

    /// The judged window is what came since the oldest sample kept, so a
    /// node's first look judges nothing (too little traffic decides nothing).
    #[test]
    fn the_recent_window_is_the_traffic_since_the_oldest_sample_kept() {
        let mut w = Watch::new(1, (Some(5), Some(6)));
        let span = Duration::from_secs(3600);
        assert_eq!(w.recent(requests(100, 0), span).requests, 0);
        let r = w.recent(requests(150, 20), span);
        assert_eq!((r.requests, r.errors), (50, 20));
        // With no span, only the newest sample stays: nothing to judge.
        assert_eq!(w.recent(requests(200, 40), Duration::ZERO).requests, 0);
    }

    /// No lock at all: gone. A lock or beat that just moved: there.
    #[test]
    fn a_holder_is_gone_without_a_lock_and_there_while_its_beat_moves() {
        let mut w = Watch::new(1, (Some(5), Some(6)));
        assert!(!w.holder_gone((Some(5), Some(6))));
        assert!(!w.holder_gone((Some(5), Some(9))));
        assert!(!w.holder_gone((Some(12), None)));
        assert!(w.holder_gone((None, Some(9))));
    }
}
