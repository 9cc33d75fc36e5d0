//! Step 9: stop the old side, now or after `keep_warm` (and a failed
//! version after `keep_failed`).

use super::*;

/// Step 9: stop the old side, or schedule it after `keep_warm`.
pub(super) async fn decommission_step(p: &Arc<Pipeline>, d: &DeployRecord) -> StepEnd {
    let old = d.from;
    if p.router.live() == old {
        return StepEnd::Skipped(format!("{old} is live; not stopping it"));
    }
    // A first deploy: no release of ours ran on the old side and nothing
    // answers there. There is nothing to keep up for a rollback, nor to
    // stop; a release's contract migrations meet no older version.
    let release = p.book.lock().await.sides[old].version.clone();
    if release.is_none() && p.router.side_health(old).0 == 0 {
        let detail = format!("{old} ran nothing before this deploy: nothing to keep up or stop");
        return match contract_if_stopped(p, old, d.id).await {
            Some(c) => StepEnd::Done(Some(format!("{detail}; {c}"))),
            None => StepEnd::Done(Some(detail)),
        };
    }
    // Sessions kept on the old side: it stays up until their window ends
    // (scheduled, so the deploy ends now and switch, rollback and new
    // deploys are not held up meanwhile).
    let now = now_ms();
    let pinned_until = p
        .router
        .pin()
        .filter(|(side, _)| *side == old)
        .map(|(_, until)| until);
    let warm_until = now + p.config().keep_warm.as_millis() as u64;
    let keep_until = pinned_until.unwrap_or(0).max(warm_until);
    if keep_until > now {
        let pending = PendingDecommission {
            side: old,
            deploy_id: d.id,
            at_ms: keep_until,
        };
        let mut book = p.book.lock().await;
        book.pending_decommission = Some(pending.clone());
        drop(book);
        p.arm_decommission(pending);
        return StepEnd::Done(Some(kept_up(
            old,
            (keep_until - now) / 1000,
            pinned_until
                .filter(|&until| until > now)
                .map(|until| until > warm_until),
        )));
    }
    match decommission(p, old, None).await {
        Ok(detail) => match contract_if_stopped(p, old, d.id).await {
            Some(c) => StepEnd::Done(Some(format!("{detail}; {c}"))),
            None => StepEnd::Done(Some(detail)),
        },
        // The release is live and good; a failed clean-up does not undo it.
        Err(e) => StepEnd::Done(Some(format!("decommission of {old} failed: {e}"))),
    }
}

/// Why `old` stays up for `secs`, naming the setting that decides it:
/// `sessions` is `None` without sessions kept there, else whether their
/// window (`sessions.window`) outlasts `deploy.keep_warm`.
fn kept_up(old: Side, secs: u64, sessions: Option<bool>) -> String {
    let why = match sessions {
        Some(true) => "for the sessions kept there (until sessions.window ends)".to_string(),
        Some(false) => {
            "(deploy.keep_warm) so rollback stays instant; the sessions kept there end sooner"
                .to_string()
        }
        None => "(deploy.keep_warm) so rollback stays instant".to_string(),
    };
    format!("{old} kept up {secs}s {why}; then stopped")
}

/// Stops a side that is not live: waits for its drain, then the supervisor
/// or the decommission hook.
/// With `expect`, only while that scheduled stop is still the pending one.
pub(super) async fn decommission(
    p: &Arc<Pipeline>,
    side: Side,
    expect: Option<&PendingDecommission>,
) -> Result<String, String> {
    let drain = p.router.config().switch.drain_timeout;
    p.router.wait_drained(side, drain).await;
    // Held until the side is stopped: no switch can make it live, and no
    // deploy can start on it, meanwhile. Everything is checked again here.
    let _fence = p.fence.lock().await;
    if p.router.live() == side {
        return Err(format!("{side} is live; refusing to stop it"));
    }
    // In a cluster another node may have switched a moment ago (its switch
    // needs the deploy lock this node holds, so none can come after this
    // read): the stored state decides, not this node's view of it.
    if let Some(cluster) = p.cluster.clone() {
        // A peek: this node's next write of the state stays conditional on
        // what it applied, not on what this read saw.
        let stored = tokio::task::spawn_blocking(move || cluster.peek(bluegreen_store::ROUTER_KEY))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the shared state, not stopping {side}: {e}"))?
            .and_then(|b| serde_json::from_slice::<bluegreen_core::state::RouterState>(&b).ok());
        if stored.is_some_and(|s| s.live == side) {
            return Err(format!(
                "{side} is live (switched on another node); refusing to stop it"
            ));
        }
    }
    {
        let book = p.book.lock().await;
        if expect.is_some_and(|e| book.pending_decommission.as_ref() != Some(e)) {
            return Err(format!("{side} was taken over since; not stopping it"));
        }
        if let Some(d) = book
            .current
            .as_ref()
            .filter(|d| !d.is_finished() && d.target == side)
        {
            return Err(format!(
                "deploy #{} is putting {} on {side}; not stopping it",
                d.id, d.version
            ));
        }
    }
    let version = p.book.lock().await.sides[side]
        .version
        .clone()
        .unwrap_or_default();
    let stopped = match (&p.config().method, &p.supervisor) {
        (DeployMethod::Supervisor(_), Some(sup)) => {
            sup.stop(side).await.map_err(|e| e.to_string())?;
            true
        }
        (
            DeployMethod::Hooks {
                decommission: Some(hook),
                ..
            },
            _,
        ) => {
            let list = p.router.config().environments[side].upstreams.join(",");
            let argv = hook.render(&[
                ("env", side.as_str()),
                ("version", &version),
                ("upstreams", &list),
                ("bluegreen", crate::exe()),
            ]);
            let (never, no_env) = (
                tokio_util::sync::CancellationToken::new(),
                Default::default(),
            );
            HookCall::new(p, argv, side, &version, &no_env)
                .run(p, &never)
                .await
                .map_err(|e| format!("decommission hook: {e}"))?;
            true
        }
        _ => false,
    };
    if !stopped {
        return Ok(format!(
            "no decommission hook configured; {side} left running"
        ));
    }
    let mut book = p.book.lock().await;
    book.sides[side].running = false;
    p.persist(&book).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "stopped {side}{}",
        if version.is_empty() {
            String::new()
        } else {
            format!(" ({version})")
        }
    ))
}

/// Once `old` (the side deploy `id` left) is stopped, rollback to it is no
/// longer instant: the release's contract migrations run. A line for the log.
async fn contract_if_stopped(p: &Arc<Pipeline>, old: Side, id: u64) -> Option<String> {
    p.config().migrations.as_ref()?;
    let from = p.book.lock().await.find(id).map(|d| d.from);
    if from != Some(old) {
        return None;
    }
    if p.book.lock().await.sides[old].running {
        return Some(format!(
            "contract not run: {old} was left running (no decommission hook), so rollback to it stays possible; stop it yourself, then run `bluegreen migrate contract --force`"
        ));
    }
    super::contract::after_decommission(p, id).await
}

/// The keep-warm time passed: stop the old side unless it went live again or
/// a newer deploy took it over.
pub(crate) async fn scheduled_decommission(
    p: &Arc<Pipeline>,
    pending: &PendingDecommission,
) -> Result<(), PipelineError> {
    {
        let book = p.book.lock().await;
        if book.pending_decommission.as_ref() != Some(pending) {
            return Ok(());
        }
    }
    let result = decommission(p, pending.side, Some(pending)).await;
    let contract = match &result {
        Ok(_) => contract_if_stopped(p, pending.side, pending.deploy_id).await,
        Err(_) => None,
    };
    let mut book = p.book.lock().await;
    if book.pending_decommission.as_ref() == Some(pending) {
        book.pending_decommission = None;
    }
    let text = match (&result, contract) {
        (Ok(s), Some(c)) => format!("after keep_warm: {s}; {c}"),
        (Ok(s), None) => format!("after keep_warm: {s}"),
        (Err(e), _) => format!("after keep_warm: decommission failed: {e}"),
    };
    tracing::info!(side = %pending.side, "{text}");
    if let Some(d) = book
        .history
        .iter_mut()
        .rev()
        .find(|d| d.id == pending.deploy_id)
    {
        d.log(text, now_ms());
    }
    p.persist(&book).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::kept_up;
    use bluegreen_core::Side;

    #[test]
    fn the_time_kept_up_is_put_down_to_the_setting_that_decides_it() {
        assert_eq!(
            kept_up(Side::Green, 600, Some(false)),
            "green kept up 600s (deploy.keep_warm) so rollback stays instant; the sessions kept there end sooner; then stopped"
        );
        assert_eq!(
            kept_up(Side::Green, 3600, Some(true)),
            "green kept up 3600s for the sessions kept there (until sessions.window ends); then stopped"
        );
        assert_eq!(
            kept_up(Side::Blue, 60, None),
            "blue kept up 60s (deploy.keep_warm) so rollback stays instant; then stopped"
        );
    }
}
