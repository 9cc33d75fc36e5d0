//! Steps 6 and 7: the gate (automatic or `promote`), then the switch.

use super::bake::describe;
use super::checks::wait_healthy;
use super::*;

/// Step 6: automatic, or wait for `promote`.
pub(super) async fn gate(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    if !d.options.manual_promote {
        return StepEnd::Done(Some("automatic".into()));
    }
    note(p, Step::Gate, "waiting for `bluegreen promote`".into()).await;
    let limit = p.config().promote_timeout.unwrap_or(Duration::MAX / 4);
    tokio::select! {
        _ = handle.promote.notified() => StepEnd::Done(Some("promoted".into())),
        _ = handle.abort.cancelled() => StepEnd::End(Outcome::Aborted, aborted(handle)),
        _ = tokio::time::sleep(limit) => StepEnd::End(Outcome::Aborted, format!("no promote within {}s (promote_timeout)", limit.as_secs())),
    }
}

/// Step 7: the atomic switch, with the old side's baseline taken just before.
pub(super) async fn switch(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    if p.router.live() == d.target {
        return StepEnd::Done(Some(format!("{} is already live", d.target)));
    }
    // After a restart the health of the target is not known yet; the switch
    // waits for fresh checks instead of being refused.
    if let end @ StepEnd::End(..) = wait_healthy(p, handle, d.target, Step::Switch).await {
        return end;
    }
    let baseline = p.router.live_window(d.from).since(&handle.baseline_start);
    let dispersion = p.baseline_dispersion(d.from, p.config().bake.interval);
    if let Err(e) = update(p, |r| {
        r.baseline = Some(baseline.clone());
        r.baseline_dispersion = Some(dispersion);
    })
    .await
    {
        return StepEnd::End(Outcome::Failed, e);
    }
    let result = p
        .router
        .switch(SwitchRequest {
            to: d.target,
            // A re-deploying rollback switches as a rollback: nobody is kept
            // on the side it leaves (the rejected version).
            kind: if d.options.reason.starts_with("rollback:") {
                SwitchKind::Rollback
            } else {
                SwitchKind::Switch
            },
            forced: false,
            actor: format!("deploy #{}", d.id),
            reason: format!("deploy {}", d.version),
        })
        .await;
    match result {
        Ok(o) => StepEnd::Done(Some(format!(
            "{} (generation {}); baseline {}",
            o.message,
            o.generation,
            describe(&baseline)
        ))),
        Err(e) => StepEnd::End(Outcome::Failed, e.to_string()),
    }
}
