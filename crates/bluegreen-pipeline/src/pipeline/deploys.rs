//! Deploys through the pipeline's public face: start one, promote it past
//! the manual gate, abort it, read the book; the migrations of a release.

use super::*;

impl Pipeline {
    /// Starts a deploy of `version` to the idle side. Refused while another runs.
    pub async fn deploy(
        self: &Arc<Self>,
        version: &str,
        options: DeployOptions,
    ) -> Result<DeployRecord, PipelineError> {
        // Versions become paths and arguments; env reaches app processes.
        bluegreen_core::input::version(version).map_err(PipelineError::BadInput)?;
        for (k, v) in &options.env {
            bluegreen_core::input::env_var(k, v).map_err(PipelineError::BadInput)?;
        }
        // In a cluster: this node takes the deploy lock (held by the run
        // from here on), and the book as the store has it (another node
        // may have deployed since).
        if self.cluster.is_some() && self.runs_here() {
            let book = self.book.lock().await;
            return Err(match book.current.as_ref().filter(|d| !d.is_finished()) {
                Some(d) => busy(d),
                None => PipelineError::Finishing(
                    "the previous deploy is finishing on this node; try again in a moment".into(),
                ),
            });
        }
        let lock = self.take_lock().await?;
        let _fence = self.fence.lock().await;
        let mut book = self.book.lock().await;
        // On a refusal below, the lock's drop gives it back.
        if let Some(fresh) = self.fresh_book().await? {
            *book = fresh;
        }
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(busy(d));
        }
        let from = self.router.live();
        let id = book.next_id;
        book.next_id += 1;
        let previous = book.sides[from].version.clone();
        let record = DeployRecord::new(id, version.to_string(), from, previous, options, now_ms());
        // The target side is about to be replaced: a decommission scheduled for it is moot.
        if book
            .pending_decommission
            .as_ref()
            .is_some_and(|p| p.side == record.target)
        {
            book.pending_decommission = None;
        }
        book.archive_current();
        book.current = Some(record.clone());
        self.persist(&book).await?;
        drop(book);
        tracing::info!(id, %version, target = %record.target, "deploy started");
        // Nobody may reach the target before its gate: sessions kept there
        // and a weighted share toward it end now.
        self.router.clear_pin(record.target).await;
        if self.router.split().is_some_and(|s| s.side == record.target) {
            let _ = self.router.set_weight(record.target, 0, true).await;
        }
        let handle = self.new_handle(id, from);
        self.spawn_run(handle, lock);
        Ok(record)
    }

    /// Lets a deploy waiting at the manual gate continue.
    pub async fn promote(&self) -> Result<DeployRecord, PipelineError> {
        let book = self.book.lock().await;
        let d = book
            .current
            .as_ref()
            .filter(|d| !d.is_finished())
            .ok_or(PipelineError::NotWaiting)?;
        // At the manual gate, or held by a bake or canary share that saw
        // too little traffic (`on_inconclusive = "hold"`).
        if d.step(Step::Gate).state != StepState::Running && d.held.is_none() {
            return Err(PipelineError::NotWaiting);
        }
        let handle = match self.handle().filter(|h| h.id == d.id) {
            Some(h) => h,
            None => return Err(self.elsewhere_or(PipelineError::NotWaiting)),
        };
        handle.promote.notify_one();
        Ok(d.clone())
    }

    /// Stops the running deploy. Before the switch nothing live changes;
    /// during the bake, traffic goes back to the old side.
    pub async fn abort(&self, reason: String) -> Result<DeployRecord, PipelineError> {
        let book = self.book.lock().await;
        let d = book
            .current
            .as_ref()
            .filter(|d| !d.is_finished())
            .ok_or(PipelineError::NoDeploy)?;
        if d.next_step() == Some(Step::Decommission) {
            return Err(PipelineError::TooLateToAbort(d.id));
        }
        let handle = match self.handle().filter(|h| h.id == d.id) {
            Some(h) => h,
            None => return Err(self.elsewhere_or(PipelineError::NoDeploy)),
        };
        *handle
            .abort_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
        handle.abort.cancel();
        Ok(d.clone())
    }

    /// The deploy in progress (or the last one, finished), if any.
    pub async fn current(&self) -> Option<DeployRecord> {
        let book = self.book.lock().await;
        book.current
            .clone()
            .or_else(|| book.history.last().cloned())
    }

    /// One deploy by id.
    pub async fn get(&self, id: u64) -> Result<DeployRecord, PipelineError> {
        self.book
            .lock()
            .await
            .find(id)
            .cloned()
            .ok_or(PipelineError::NotFound(id))
    }

    /// Every deploy kept, oldest first (the current one last).
    pub async fn history(&self) -> Vec<DeployRecord> {
        let book = self.book.lock().await;
        book.history
            .iter()
            .chain(book.current.iter())
            .cloned()
            .collect()
    }

    /// What each side runs.
    pub async fn sides(&self) -> bluegreen_core::Sides<bluegreen_core::deploy::SideRelease> {
        self.book.lock().await.sides.clone()
    }

    /// `bluegreen migrate status`: every migration file and what the
    /// database's tracking table says of it, and the last contract.
    pub async fn migrations(&self) -> Result<serde_json::Value, PipelineError> {
        let config = self.config();
        let Some(m) = config.migrations.as_ref() else {
            return Err(PipelineError::BadInput(
                "no [deploy.migrations] in the config".into(),
            ));
        };
        let status = migrate::status(m, &config.workdir).await?;
        let contracted = self.book.lock().await.contracted.clone();
        let mut v = serde_json::to_value(status).unwrap_or_default();
        v["contracted"] = serde_json::to_value(contracted).unwrap_or_default();
        Ok(v)
    }

    /// `bluegreen migrate contract`: the live release's contract files now.
    pub async fn contract(
        self: &Arc<Self>,
        force: bool,
        actor: String,
    ) -> Result<String, PipelineError> {
        if let Some(refused) = self.busy_here().await {
            return Err(refused);
        }
        let lock = self.take_lock().await?;
        let result = runner::contract::by_hand(self, force, actor).await;
        lock.release().await;
        result
    }

    /// An accepted shadow difference counts where the deploy's run is
    /// judged: in a cluster, on the node holding the deploy lock.
    pub fn accept_here(&self) -> Result<(), PipelineError> {
        match self.held_elsewhere() {
            Some(node) => Err(PipelineError::Elsewhere(node)),
            None => Ok(()),
        }
    }
}
