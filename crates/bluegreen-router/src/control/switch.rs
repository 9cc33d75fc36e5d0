//! Switch and rollback: refuse a side that cannot serve (unless forced),
//! persist the new state, swap the snapshot, then drain the old side.

use super::{describe_health, now, Change, PersistFailed, Router};
use crate::snapshot::Epoch;
use crate::taps::shadow::Shadow;
use bluegreen_core::state::{RouterState, SwitchKind, SwitchRecord, SwitchRequest};
use bluegreen_core::Side;
use std::sync::Arc;

/// Why a switch was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwitchError {
    #[error("refusing to switch to {side}: no healthy upstream ({detail}); fix it, or pass --force (API: \"force\": true) to switch anyway")]
    Unhealthy { side: Side, detail: String },
    #[error("nothing to roll back to: no switch has been recorded yet")]
    NoHistory,
    #[error("could not persist the switch, live side unchanged: {0}")]
    Persist(String),
    #[error("switch refused, live side unchanged: {0}")]
    Unavailable(String),
    #[error("switch refused, live side unchanged: {0}")]
    Conflict(String),
    /// The driven router (nginx) did not take the switch; it was put back.
    #[error("switch refused, live side unchanged: {0}")]
    Router(String),
}

impl From<PersistFailed> for SwitchError {
    fn from(e: PersistFailed) -> SwitchError {
        match e.1 {
            super::Refusal::Failed => SwitchError::Persist(e.0),
            super::Refusal::Unreachable => SwitchError::Unavailable(e.0),
            super::Refusal::Conflict => SwitchError::Conflict(e.0),
            super::Refusal::Router => SwitchError::Router(e.0),
        }
    }
}

/// Result of a switch request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SwitchOutcome {
    /// False when the requested side was already live.
    pub changed: bool,
    pub live: Side,
    pub generation: u64,
    /// The record written, when something changed.
    pub record: Option<SwitchRecord>,
    pub message: String,
    /// With a shared store: which nodes applied it before the call returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged: Option<super::Convergence>,
    /// The store revision this switch wrote (taken under the state lock).
    #[serde(skip)]
    pub revision: i64,
}

/// What a switch that happened leaves to do after the swap.
struct Switched {
    from: Side,
    old_epoch: Arc<Epoch>,
    stopped_shadow: Option<Arc<Shadow>>,
    record: SwitchRecord,
}

impl Router {
    /// Switches live traffic to `req.to`. Persists, swaps, then drains.
    pub async fn switch(
        self: &Arc<Self>,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, SwitchError> {
        let outcome = self.switch_here(req).await?;
        Ok(self.converged(outcome).await)
    }

    /// A switch persisted (one conditional write) and applied on this node,
    /// without waiting for the others: a watchdog's rollback is recorded at
    /// once, not after a node that is gone held the wait to its end.
    pub async fn switch_here(
        self: &Arc<Self>,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, SwitchError> {
        let me = self.clone();
        detached(async move { me.switch_now(req).await }).await
    }

    async fn switch_now(
        self: &Arc<Self>,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, SwitchError> {
        let asked = req.clone();
        self.route_then(
            |state, current| plan(state, current, req),
            |done| self.after_switch(asked, done),
        )
        .await
    }

    /// With a shared store, a switch is done when every node applied it:
    /// waits for them (up to `converge_timeout`) and says who has not.
    async fn converged(&self, mut outcome: SwitchOutcome) -> SwitchOutcome {
        if !outcome.changed {
            return outcome;
        }
        if let Some(c) = self.converge(outcome.revision).await {
            if c.stale.is_empty() {
                outcome.message = format!(
                    "{}; applied on all {} nodes in {} ms",
                    outcome.message,
                    c.synced.len(),
                    c.waited_ms
                );
            } else {
                outcome.message = format!(
                    "{}; NOT yet applied on {} after {} ms (they keep serving the old side until they catch up; check them with `bluegreen status`)",
                    outcome.message,
                    c.stale.join(", "),
                    c.waited_ms
                );
            }
            outcome.converged = Some(c);
        }
        outcome
    }

    /// Switches back to the side that was live before the last switch.
    pub async fn rollback(
        self: &Arc<Self>,
        forced: bool,
        actor: String,
        reason: String,
    ) -> Result<SwitchOutcome, SwitchError> {
        let me = self.clone();
        let outcome = detached(async move { me.rollback_now(forced, actor, reason).await }).await?;
        Ok(self.converged(outcome).await)
    }

    async fn rollback_now(
        self: &Arc<Self>,
        forced: bool,
        actor: String,
        reason: String,
    ) -> Result<SwitchOutcome, SwitchError> {
        self.route_then(
            |state, current| {
                let to = state
                    .rollback_target()
                    .map_err(|_| SwitchError::NoHistory)?;
                let req = SwitchRequest {
                    to,
                    kind: SwitchKind::Rollback,
                    forced,
                    actor,
                    reason,
                };
                let Change { state, edit, value } = plan(state, current, req.clone())?;
                Ok::<_, SwitchError>(Change {
                    state,
                    edit,
                    value: (req, value),
                })
            },
            |(asked, done)| self.after_switch(asked, done),
        )
        .await
    }

    /// The side a rollback would go to.
    pub async fn rollback_target(&self) -> Result<Side, SwitchError> {
        self.state
            .lock()
            .await
            .rollback_target()
            .map_err(|_| SwitchError::NoHistory)
    }

    /// A switch that happened (here, or on another node of a cluster): a
    /// running shadow's end is announced, the switch is counted and
    /// announced.
    pub(super) fn announce_switch(
        &self,
        record: &bluegreen_core::state::SwitchRecord,
        stopped_shadow: Option<&Arc<Shadow>>,
    ) {
        if let Some(shadow) = stopped_shadow {
            self.events
                .emit(crate::events::Event::Shadow(Box::new(shadow.report())));
            tracing::info!("shadowing stopped by the switch");
        }
        let kind = match record.kind {
            SwitchKind::Rollback => "rollback",
            _ => "switch",
        };
        *self
            .switch_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        self.events
            .emit(crate::events::Event::Switch(crate::events::SwitchEvent {
                from: record.from,
                to: record.to,
                kind,
                generation: record.generation,
                forced: record.forced,
                actor: record.actor.clone(),
                reason: record.reason.clone(),
                at_unix_ms: record.at_unix_ms,
                record: record.clone(),
            }));
    }

    /// After the swap, still under the state lock (so announcements come in
    /// the order of the switches): a running shadow's end is announced, the
    /// switch is counted and announced, and the old side starts draining.
    fn after_switch(
        self: &Arc<Self>,
        req: SwitchRequest,
        done: Result<Switched, SwitchOutcome>,
    ) -> SwitchOutcome {
        let s = match done {
            Ok(s) => s,
            Err(unchanged) => return unchanged,
        };
        self.announce_switch(&s.record, s.stopped_shadow.as_ref());
        let generation = s.record.generation;
        tracing::info!(from = %s.from, to = %req.to, generation, kind = ?req.kind, forced = req.forced, actor = %req.actor, reason = %req.reason, "switched");
        self.spawn_drain(s.from, generation, s.old_epoch);
        SwitchOutcome {
            changed: true,
            live: req.to,
            generation,
            record: Some(s.record),
            message: format!("{} is now live (was {})", req.to, s.from),
            converged: None,
            revision: self.applied.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

/// What a switch to `req.to` changes, decided from the state and snapshot:
/// nothing when it is live already; a refusal when it has no healthy
/// upstream and the switch is not forced; else the next state and a
/// snapshot with the new live side, the target's epoch revived and the old
/// side's retired, and no shadow run (its roles would be reversed).
fn plan(
    state: &RouterState,
    current: &Arc<crate::snapshot::Snapshot>,
    req: SwitchRequest,
) -> Result<Change<Result<Switched, SwitchOutcome>>, SwitchError> {
    if req.to == state.live {
        return Ok(Change::none(Err(SwitchOutcome {
            changed: false,
            live: state.live,
            generation: state.generation,
            record: None,
            message: format!("{} is already live; nothing changed", req.to),
            converged: None,
            revision: 0,
        })));
    }
    let target = &current.pools[req.to];
    if !req.forced && target.healthy_count() == 0 {
        return Err(SwitchError::Unhealthy {
            side: req.to,
            detail: describe_health(target),
        });
    }
    let (at, at_unix_ms) = now();
    let next = state
        .switched(&req, at, at_unix_ms)
        .map_err(|e| SwitchError::Persist(e.to_string()))?;
    let record = next.history.last().cloned().expect("a switch is recorded");
    let (from, to, generation) = (state.live, req.to, next.generation);
    let old_epoch = current.epochs[from].clone();
    let stopped_shadow = current.shadow.clone();
    let retired = old_epoch.clone();
    // Sessions on the old side stay there for the window; after a
    // rollback nobody is kept on the side that was rejected.
    // Nor while paused: that is a migration, after which the old version
    // must not serve anyone.
    let pin = match (req.kind, &current.sessions) {
        (SwitchKind::Switch, Some(policy)) if current.hold.is_none() => {
            Some(crate::snapshot::Pin {
                side: from,
                generation,
                until_ms: at_unix_ms + policy.window.as_millis() as u64,
            })
        }
        _ => None,
    };
    let edit = move |s: &mut crate::snapshot::Snapshot| {
        s.pin = pin;
        s.epochs[to].revive();
        retired.retire(generation);
        if let Some(shadow) = &s.shadow {
            shadow.stop();
        }
        s.shadow = None;
        s.split = None;
        s.generation = generation;
        s.live = to;
    };
    Ok(Change {
        state: Some(next),
        edit: Some(Box::new(edit)),
        value: Ok(Switched {
            from,
            old_epoch,
            stopped_shadow,
            record,
        }),
    })
}

/// Runs a switch to its end even when its caller goes away (a client that
/// hangs up, a timeout): dropped halfway, the persisted state, the
/// snapshot and a driven router could disagree.
async fn detached(
    work: impl std::future::Future<Output = Result<SwitchOutcome, SwitchError>> + Send + 'static,
) -> Result<SwitchOutcome, SwitchError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(SwitchError::Persist(format!(
            "the switch's task ended: {e}"
        )))
    })
}
