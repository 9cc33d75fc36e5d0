//! Manual switches and rollbacks, under the fence: never onto a stopped
//! side, never back past a contract migration without `--force`.

use super::*;

impl Pipeline {
    /// A manual switch, refused while a deploy runs (it owns the switch).
    /// In a cluster it also takes the deploy lock for its length, so it
    /// cannot land between another node's decommission check and its stop.
    pub async fn switch(&self, req: SwitchRequest) -> Result<SwitchOutcome, PipelineError> {
        if let Some(refused) = self.busy_here().await {
            return Err(refused);
        }
        let lock = match self.take_lock().await {
            Ok(l) => l,
            Err(e) => return Err(self.contended(e).await),
        };
        let result = self.switch_locked(req).await;
        lock.release().await;
        result
    }

    pub(crate) async fn switch_locked(
        &self,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, PipelineError> {
        // Read before the book lock: status reads never wait on etcd.
        let fresh = self.fresh_book().await?;
        let _fence = self.fence.lock().await;
        let mut book = self.book.lock().await;
        if let Some(fresh) = fresh {
            *book = fresh;
        }
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(busy(d));
        }
        let to = req.to;
        if let Some(refused) = stopped(&book, to, self.router.live()) {
            return Err(refused);
        }
        // A side still running a release from before the last contract
        // would meet a schema it cannot use.
        let onto = RollbackPlan::Switch {
            side: to,
            version: book.sides[to].version.clone(),
        };
        if let RollbackPlan::Nothing(why) = rollback::past_contract(&book, onto, req.forced) {
            return Err(PipelineError::Stopped(why));
        }
        drop(book);
        let outcome = self.router.switch(req).await?;
        self.cancel_decommission_of(to).await?;
        Ok(outcome)
    }

    /// Back to the side live before the last switch: instant while it is still
    /// up and what it runs was good; a re-deploy through the pipeline once it
    /// was decommissioned. Never onto a version a deploy rejected: then the
    /// good release before the live one, or a refusal that says why
    /// (`core::rollback`). With `to_version`, that version on the idle side.
    pub async fn rollback(
        self: &Arc<Self>,
        forced: bool,
        to_version: Option<String>,
        actor: String,
        reason: String,
    ) -> Result<RollbackResult, PipelineError> {
        if let Some(v) = &to_version {
            bluegreen_core::input::version(v).map_err(PipelineError::BadInput)?;
        }
        // In a cluster, under the deploy lock from the plan to the switch
        // (as a manual switch), with the book as the store has it.
        if let Some(refused) = self.busy_here().await {
            return Err(refused);
        }
        let lock = match self.take_lock().await {
            Ok(l) => l,
            Err(e) => return Err(self.contended(e).await),
        };
        self.rollback_locked(forced, to_version, actor, reason, lock)
            .await
    }

    pub(crate) async fn rollback_locked(
        self: &Arc<Self>,
        forced: bool,
        to_version: Option<String>,
        actor: String,
        reason: String,
        lock: cluster::DeployLock,
    ) -> Result<RollbackResult, PipelineError> {
        let fresh = self.fresh_book().await?;
        let fence = self.fence.lock().await;
        let mut book = self.book.lock().await;
        if let Some(fresh) = fresh {
            *book = fresh;
        }
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(busy(d));
        }
        let live = self.router.live();
        let plan = match &to_version {
            Some(v) => rollback::plan_to(&book, live, v, forced),
            None => {
                let target = self
                    .router
                    .rollback_target()
                    .await
                    .map_err(PipelineError::Switch)?;
                rollback::plan(&book, live, target)
            }
        };
        let plan = rollback::past_contract(&book, plan, forced);
        drop(book);
        match plan {
            RollbackPlan::Nothing(why) => Err(PipelineError::Stopped(why)),
            RollbackPlan::AlreadyLive { version } => Err(PipelineError::Stopped(format!(
                "{version} is already live on {live}"
            ))),
            RollbackPlan::Redeploy { version, why, .. } => {
                // The deploy takes the fence (and the lock) itself and
                // checks again.
                drop(fence);
                lock.release().await;
                let why = format!("rollback: {why}");
                let record = self
                    .deploy(
                        &version,
                        DeployOptions {
                            actor,
                            reason: why.clone(),
                            ..DeployOptions::default()
                        },
                    )
                    .await?;
                Ok(RollbackResult {
                    message: format!("{why} (deploy #{})", record.id),
                    switched: None,
                    redeploy: Some(record),
                })
            }
            RollbackPlan::Switch { side, version } => {
                let outcome = self
                    .router
                    .switch(SwitchRequest {
                        to: side,
                        kind: SwitchKind::Rollback,
                        forced,
                        actor,
                        reason,
                    })
                    .await?;
                self.cancel_decommission_of(side).await?;
                drop(fence);
                lock.release().await;
                let running = version.map(|v| format!(" ({v})")).unwrap_or_default();
                Ok(RollbackResult {
                    message: format!("{}{running}", outcome.message),
                    switched: Some(outcome),
                    redeploy: None,
                })
            }
        }
    }

    /// The side is live again: a decommission scheduled for it must not happen.
    pub(crate) async fn cancel_decommission_of(&self, side: Side) -> Result<(), PipelineError> {
        let mut book = self.book.lock().await;
        if let Some(p) = book.pending_decommission.clone().filter(|p| p.side == side) {
            book.pending_decommission = None;
            book.settle_side_by_side(
                p.deploy_id,
                None,
                format!("{side} is live again: its scheduled stop was called off, both stay up"),
            );
            self.persist(&book).await?;
            tracing::info!(%side, "scheduled decommission cancelled: the side is live again");
        }
        Ok(())
    }

    /// What `rollback` would do now, in words (for `status`): the same
    /// plan as `rollback` itself makes.
    pub async fn rollback_preview(&self) -> Option<String> {
        let target = self.router.rollback_target().await.ok()?;
        let book = self.book.lock().await;
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Some(format!(
                "refused while deploy #{} runs (abort it, or let its bake roll it back)",
                d.id
            ));
        }
        let plan = rollback::plan(&book, self.router.live(), target);
        Some(match rollback::past_contract(&book, plan, false) {
            RollbackPlan::Switch { side, version } => format!(
                "an instant switch to {side}{}, still running",
                version.map(|v| format!(" ({v})")).unwrap_or_default()
            ),
            RollbackPlan::Redeploy { side, version, why } => {
                format!("re-deploys {version} to {side} ({why})")
            }
            RollbackPlan::AlreadyLive { version } => format!("{version} is already live"),
            // The plan's reason already says "nothing to roll back to".
            RollbackPlan::Nothing(why) if why.starts_with("nothing to roll back to") => why,
            RollbackPlan::Nothing(why) => format!("nothing to roll back to: {why}"),
        })
    }

    /// A rollback switch, forced: the old side was serving moments ago and a
    /// breach must not wait for another analysis.
    pub(crate) async fn switch_back(
        &self,
        d: &DeployRecord,
        kind: SwitchKind,
        reason: &str,
    ) -> Result<SwitchOutcome, SwitchError> {
        self.router
            .switch(SwitchRequest {
                to: d.from,
                kind,
                forced: true,
                actor: format!("deploy #{}", d.id),
                reason: reason.to_string(),
            })
            .await
    }
}

/// A manual switch to a side whose app was stopped would send live traffic
/// to nothing: refused, pointing at rollback (which re-deploys it).
fn stopped(book: &DeployBook, to: Side, live: Side) -> Option<PipelineError> {
    let r = &book.sides[to];
    (to != live && !r.running && r.version.is_some()).then(|| {
        PipelineError::Stopped(format!(
            "{to} ({}) was decommissioned: its app is stopped; use rollback or deploy to bring it back",
            r.version.as_deref().unwrap_or("?")
        ))
    })
}
