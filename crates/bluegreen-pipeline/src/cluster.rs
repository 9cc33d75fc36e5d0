//! One deploy in a cluster of router nodes. The deploy book lives in the
//! shared store; a deploy runs on the node that holds the `deploy` lock
//! (held with that node's lease, so it goes when the node does). Every
//! other node follows the book for its views and refusals; when a deploy
//! is unfinished and the lock is free (its node died), one of them takes
//! the lock and resumes it from the persisted step, as a restarted single
//! node would. Scheduled decommissions are run the same way.

use crate::{now_ms, runner, Pipeline, PipelineError};
use bluegreen_core::deploy::DeployBook;
use bluegreen_store::cluster::{lock_holder, lock_key, Link, Lock};
use bluegreen_store::{load_json, DEPLOYS_KEY};
use std::sync::Arc;
use std::time::Duration;

use crate::shared::{new_book, normalized, DEPLOY_LOCK};

/// The deploy lock while this process holds it, given back exactly once:
/// by `release` where what comes next must find it free (a rollback that
/// re-deploys), or by its drop, in a background task, on any other way out.
/// `keep` leaves it to the node's lease instead (a handover to a new
/// process, or a lock already lost: releasing it could delete a lock
/// another node has taken since).
#[must_use = "dropping it gives the lock back"]
pub(crate) struct DeployLock(Option<Arc<dyn bluegreen_store::Cluster>>);

impl DeployLock {
    /// No lock: a single node has none to take.
    pub(crate) fn none() -> DeployLock {
        DeployLock(None)
    }

    /// True when a lock was taken (in a cluster).
    pub(crate) fn held(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the lock back now.
    pub(crate) async fn release(mut self) {
        if let Some(cluster) = self.0.take() {
            unlock(cluster).await;
        }
    }

    /// Lets it go with the node's lease, without a word to the store.
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        if let Some(cluster) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(unlock(cluster));
                }
                Err(_) => tracing::warn!(
                    "the deploy lock was dropped outside the runtime; it goes with this node's lease"
                ),
            }
        }
    }
}

async fn unlock(cluster: Arc<dyn bluegreen_store::Cluster>) {
    let released = tokio::task::spawn_blocking(move || cluster.unlock(DEPLOY_LOCK)).await;
    if let Ok(Err(e)) = released {
        tracing::warn!(error = %e, "could not release the deploy lock; it goes with this node's lease");
    }
}

impl Pipeline {
    /// Takes the deploy lock for this process: a guard that holds it (none
    /// alone, without a cluster); refused when another node, or another
    /// activity of this one, holds it.
    pub(crate) async fn take_lock(&self) -> Result<DeployLock, PipelineError> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(DeployLock(None));
        };
        let taker = cluster.clone();
        let found = tokio::task::spawn_blocking(move || taker.try_lock(DEPLOY_LOCK))
            .await
            .expect("lock task")?;
        match found {
            Lock::Taken => Ok(DeployLock(Some(cluster))),
            Lock::HeldHere => Err(PipelineError::Finishing(
                "a deploy or decommission is starting or finishing on this node; try again in a moment"
                    .into(),
            )),
            Lock::HeldBy(node) => Err(PipelineError::Elsewhere(node)),
        }
    }

    /// Gives back a deploy lock this process holds with no run of its own
    /// (a suspended run kept it for a handover that did not happen).
    pub(crate) async fn release_kept_lock(&self) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if !self.runs_here() && cluster.holds(DEPLOY_LOCK) {
            unlock(cluster).await;
        }
    }

    /// The book as the store has it now; the next write is conditional on
    /// it. Only with a shared store (alone, the book in memory is the truth).
    pub(crate) async fn fresh_book(&self) -> Result<Option<DeployBook>, PipelineError> {
        if self.cluster.is_none() {
            return Ok(None);
        }
        let store = self.store.clone();
        let book: Option<DeployBook> =
            tokio::task::spawn_blocking(move || load_json(store.as_ref(), DEPLOYS_KEY))
                .await
                .expect("read task")?;
        Ok(Some(book.map(normalized).unwrap_or_else(new_book)))
    }

    /// The node holding the deploy lock, when it is not this one.
    pub(crate) fn held_elsewhere(&self) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let view = cluster.view();
        let v = view.borrow();
        let holder = v.values.get(&lock_key(DEPLOY_LOCK))?;
        let node = lock_holder(&holder.value);
        (node != cluster.node()).then_some(node)
    }

    pub(crate) fn runs_here(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// With a shared store: follows the book and takes over what a dead
    /// node left (an unfinished deploy, a decommission that came due).
    pub(crate) fn spawn_follow(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let me = self.clone();
        let mut view = cluster.view();
        let suspend = self
            .suspend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = view.changed() => if r.is_err() { return },
                    _ = suspend.cancelled() => return,
                }
                if me.runs_here() && !me.finishing.load(std::sync::atomic::Ordering::Acquire) {
                    // A lock lost while running (its lease expired before a
                    // new session could carry it over): another node may
                    // resume the deploy now, so this one stops where it is.
                    if !cluster.holds(DEPLOY_LOCK) {
                        tracing::error!("lost the deploy lock while running a deploy: stopping here; the node that takes the lock resumes it");
                        me.stop_run();
                    }
                    continue;
                }
                let (book, lock_free, up) = {
                    let v = view.borrow_and_update();
                    let book = v.values.get(DEPLOYS_KEY).and_then(|b| {
                        serde_json::from_slice::<DeployBook>(&b.value)
                            .ok()
                            .map(|book| (b.revision, normalized(book)))
                    });
                    (
                        book,
                        !v.values.contains_key(&lock_key(DEPLOY_LOCK)),
                        v.link == Link::Up,
                    )
                };
                let Some((_, book)) = book else {
                    continue;
                };
                // Views and refusals on this node follow the shared book:
                // read again under the book lock, and only forward (a
                // write of this node may be newer than what was read).
                {
                    let mut mine = me.book.lock().await;
                    if me.runs_here() || cluster.holds(DEPLOY_LOCK) {
                        continue;
                    }
                    let newest = view.borrow().values.get(DEPLOYS_KEY).cloned();
                    if let Some(v) = newest.filter(|v| v.revision > cluster.revision(DEPLOYS_KEY)) {
                        if let Ok(b) = serde_json::from_slice::<DeployBook>(&v.value) {
                            let b = normalized(b);
                            // Followers of this node's event stream (`deploy
                            // --follow`, dashboards) see the deploy another
                            // node runs, as it moves.
                            if b.current != mine.current {
                                if let Some(d) = &b.current {
                                    me.router.emit(bluegreen_router::events::Event::Deploy(
                                        Box::new(d.clone()),
                                    ));
                                }
                            }
                            *mine = b;
                            cluster.adopt(DEPLOYS_KEY, v.revision);
                        }
                    }
                }
                if !(lock_free && up) {
                    continue;
                }
                let unfinished = book.current.as_ref().is_some_and(|d| !d.is_finished());
                let due = book
                    .pending_decommission
                    .as_ref()
                    .is_some_and(|p| p.at_ms <= now_ms());
                if unfinished || due {
                    if let Err(e) = me.take_over().await {
                        tracing::debug!(error = %e, "did not take over the deploy");
                    }
                }
            }
        });
    }

    /// Takes the lock, reads the book again, and resumes what is left.
    async fn take_over(self: &Arc<Self>) -> Result<(), PipelineError> {
        if self.runs_here() {
            return Ok(());
        }
        let lock = self.take_lock().await?;
        if !lock.held() {
            return Ok(());
        }
        let book = match self.fresh_book().await? {
            Some(b) => b,
            None => return Ok(()),
        };
        let node = self
            .cluster
            .as_ref()
            .map(|c| c.node().to_string())
            .unwrap_or_default();
        *self.book.lock().await = book.clone();
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            tracing::info!(id = d.id, version = %d.version, step = ?d.next_step(), %node, "resuming deploy #{} left by a node that is gone", d.id);
            // In the record too (its log, `history`, `deploy --follow`):
            // who carries the deploy on, and from where.
            let step = d.next_step().map(|s| s.as_str()).unwrap_or("its end");
            self.record(format!(
                "node {node} took the deploy over at {step}: the node running it went away (its lock lapsed with its lease)"
            ))
            .await;
            let handle = self.new_handle(d.id, d.from);
            self.spawn_run(handle, lock);
            return Ok(());
        }
        if let Some(p) = book
            .pending_decommission
            .clone()
            .filter(|p| p.at_ms <= now_ms())
        {
            tracing::info!(side = %p.side, %node, "running the scheduled decommission");
            if let Err(e) = runner::scheduled_decommission(self, &p).await {
                tracing::error!(side = %p.side, error = %e, "scheduled decommission failed");
            }
        }
        lock.release().await;
        Ok(())
    }
}
