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
) -> Result<String, StepError> {
    use StepError::Refused;
    let drain = p.router.config().switch.drain_timeout;
    p.router.wait_drained(side, drain).await;
    // Held until the side is stopped: no switch can make it live, and no
    // deploy can start on it, meanwhile. Everything is checked again here.
    let _fence = p.fence.lock().await;
    if p.router.live() == side {
        return Err(Refused(format!("{side} is live; refusing to stop it")));
    }
    // In a cluster another node may have switched a moment ago (its switch
    // needs the deploy lock this node holds, so none can come after this
    // read): the stored state decides, not this node's view of it.
    if let Some(cluster) = p.cluster.clone() {
        // A peek: this node's next write of the state stays conditional on
        // what it applied, not on what this read saw.
        let stored = tokio::task::spawn_blocking(move || cluster.peek(bluegreen_store::ROUTER_KEY))
            .await
            .map_err(|e| {
                Refused(format!(
                    "cannot read the shared state, not stopping {side}: {e}"
                ))
            })?
            .map_err(|e| {
                Refused(format!(
                    "cannot read the shared state, not stopping {side}: {e}"
                ))
            })?
            .and_then(|b| serde_json::from_slice::<bluegreen_core::state::RouterState>(&b).ok());
        if stored.is_some_and(|s| s.live == side) {
            return Err(Refused(format!(
                "{side} is live (switched on another node); refusing to stop it"
            )));
        }
    }
    {
        let book = p.book.lock().await;
        if expect.is_some_and(|e| book.pending_decommission.as_ref() != Some(e)) {
            return Err(Refused(format!(
                "{side} was taken over since; not stopping it"
            )));
        }
        if let Some(d) = book
            .current
            .as_ref()
            .filter(|d| !d.is_finished() && d.target == side)
        {
            return Err(Refused(format!(
                "deploy #{} is putting {} on {side}; not stopping it",
                d.id, d.version
            )));
        }
    }
    let version = p.book.lock().await.sides[side]
        .version
        .clone()
        .unwrap_or_default();
    let stopped = match (&p.config().method, &p.supervisor) {
        (DeployMethod::Supervisor(_), Some(sup)) => {
            sup.stop(side).await?;
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
                .map_err(|source| StepError::Command {
                    what: "decommission hook".into(),
                    source,
                })?;
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
    p.persist(&book)
        .await
        .map_err(|source| StepError::Persist {
            what: "stopped, but could not record it",
            source,
        })?;
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
    // `decommission` marks a side it stopped as not running.
    match &result {
        Ok(_) if !book.sides[pending.side].running => book.settle_side_by_side(
            pending.deploy_id,
            Some(now_ms()),
            format!("{} was stopped after its keep-up time", pending.side),
        ),
        Ok(s) => book.settle_side_by_side(
            pending.deploy_id,
            None,
            format!("{}: both stay up", s.trim_end_matches('.')),
        ),
        Err(e) => book.settle_side_by_side(
            pending.deploy_id,
            None,
            format!(
                "the scheduled stop of {} did not happen ({e}): both stay up",
                pending.side
            ),
        ),
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

#[cfg(test)]
mod step_tests {
    //! The decommission step in process, against `runner::fake`: the
    //! deploy took green live (v2) from blue (v1); the decommission hook
    //! leaves a file per side it stopped.

    use super::super::fake::{setup, Extra, Setup, GOOD};
    use super::*;
    use bluegreen_core::deploy::DeployOptions;

    async fn after_switch(live: Side, keep_warm: &str) -> (Setup, tempfile::TempDir) {
        let marks = tempfile::tempdir().unwrap();
        let deploy = format!("keep_warm = \"{keep_warm}\"");
        let hooks = format!(
            "decommission = \"touch {}/stopped-{{env}}\"",
            marks.path().display()
        );
        let extra = Extra {
            deploy: &deploy,
            hooks: &hooks,
            ..Default::default()
        };
        let s = setup(live, GOOD, GOOD, extra, DeployOptions::default()).await;
        {
            let mut book = s.p.book.lock().await;
            book.sides[Side::Blue] = SideRelease {
                version: Some("v1".into()),
                running: true,
            };
            book.sides[Side::Green] = SideRelease {
                version: Some("v2".into()),
                running: true,
            };
        }
        (s, marks)
    }

    #[tokio::test]
    async fn the_old_side_is_stopped_by_the_hook_once_nothing_keeps_it() {
        let (s, marks) = after_switch(Side::Green, "0s").await;
        let end = decommission_step(&s.p, &s.d).await;
        assert!(
            matches!(&end, StepEnd::Done(Some(t)) if t == "stopped blue (v1)"),
            "{end:?}"
        );
        assert!(
            marks.path().join("stopped-blue").exists(),
            "the hook ran for blue"
        );
        assert!(!marks.path().join("stopped-green").exists());
        assert!(!s.p.book.lock().await.sides[Side::Blue].running);
    }

    #[tokio::test]
    async fn an_old_side_that_is_live_again_is_never_stopped() {
        let (s, marks) = after_switch(Side::Blue, "0s").await;
        let end = decommission_step(&s.p, &s.d).await;
        assert!(
            matches!(&end, StepEnd::Skipped(t) if t == "blue is live; not stopping it"),
            "{end:?}"
        );
        assert!(!marks.path().join("stopped-blue").exists());
        // Asked directly, it refuses too.
        let refused = decommission(&s.p, Side::Blue, None).await;
        assert!(
            matches!(&refused, Err(StepError::Refused(why)) if why == "blue is live; refusing to stop it"),
            "{refused:?}"
        );
        assert!(s.p.book.lock().await.sides[Side::Blue].running);
    }

    #[tokio::test]
    async fn keep_warm_schedules_the_stop_and_the_deploy_ends_now() {
        let (s, marks) = after_switch(Side::Green, "60s").await;
        let before = now_ms();
        let end = decommission_step(&s.p, &s.d).await;
        assert!(
            matches!(&end, StepEnd::Done(Some(t)) if t == "blue kept up 60s (deploy.keep_warm) so rollback stays instant; then stopped"),
            "{end:?}"
        );
        let pending = s.p.book.lock().await.pending_decommission.clone().unwrap();
        assert_eq!((pending.side, pending.deploy_id), (Side::Blue, 1));
        assert!(pending.at_ms >= before + 60_000, "{pending:?}");
        assert!(
            !marks.path().join("stopped-blue").exists(),
            "not stopped yet"
        );
    }

    #[tokio::test]
    async fn the_side_by_side_time_ends_when_the_scheduled_stop_happens() {
        let (s, marks) = after_switch(Side::Green, "60s").await;
        decommission_step(&s.p, &s.d).await;
        let pending = s.p.book.lock().await.pending_decommission.clone().unwrap();
        let since = now_ms() - 5_000;
        {
            let mut book = s.p.book.lock().await;
            let mut d = s.d.clone();
            d.side_by_side = Some(bluegreen_core::deploy::SideBySide {
                since_ms: since,
                until_ms: None,
                planned_until_ms: Some(pending.at_ms),
                detail: "blue is kept up until its scheduled stop (deploy.keep_warm)".into(),
            });
            book.current = None;
            book.history.push(d);
        }
        scheduled_decommission(&s.p, &pending).await.unwrap();
        assert!(marks.path().join("stopped-blue").exists());
        let book = s.p.book.lock().await;
        let both = book.find(s.d.id).unwrap().side_by_side.clone().unwrap();
        assert!(
            both.until_ms.is_some_and(|u| u >= since + 5_000),
            "{both:?}"
        );
        assert_eq!(both.planned_until_ms, None);
        assert_eq!(both.detail, "blue was stopped after its keep-up time");
        assert!(
            both.sentence(now_ms())
                .starts_with("both environments ran side by side for "),
            "{}",
            both.sentence(now_ms())
        );
    }

    #[tokio::test]
    async fn sessions_kept_on_the_old_side_keep_it_up_longer_than_keep_warm() {
        let (s, _marks) = after_switch(Side::Green, "60s").await;
        *s.fake.pin.lock().unwrap() = Some((Side::Blue, now_ms() + 3_600_000));
        let end = decommission_step(&s.p, &s.d).await;
        match &end {
            StepEnd::Done(Some(t)) => {
                assert!(
                    t.starts_with("blue kept up 3599s") || t.starts_with("blue kept up 3600s"),
                    "{t}"
                );
                assert!(t.contains("for the sessions kept there"), "{t}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(*s.fake.live.lock().unwrap(), Side::Green);
    }

    /// A newer deploy took the old side over before its keep-warm time
    /// passed: the scheduled stop leaves it running and the first deploy's
    /// log says why.
    #[tokio::test]
    async fn a_scheduled_stop_leaves_a_side_a_newer_deploy_is_putting_a_release_on() {
        let (s, marks) = after_switch(Side::Green, "60s").await;
        assert!(matches!(
            decommission_step(&s.p, &s.d).await,
            StepEnd::Done(_)
        ));
        let pending = {
            let mut book = s.p.book.lock().await;
            book.archive_current();
            let next = DeployRecord::new(
                2,
                "v3".into(),
                Side::Green,
                Some("v2".into()),
                DeployOptions::default(),
                0,
            );
            assert_eq!(next.target, Side::Blue);
            book.current = Some(next);
            book.pending_decommission.clone().unwrap()
        };
        scheduled_decommission(&s.p, &pending).await.unwrap();
        assert!(
            !marks.path().join("stopped-blue").exists(),
            "blue was not stopped"
        );
        let book = s.p.book.lock().await;
        assert!(book.pending_decommission.is_none());
        let log = book
            .history
            .iter()
            .find(|d| d.id == 1)
            .unwrap()
            .log
            .last()
            .unwrap()
            .text
            .clone();
        assert_eq!(
            log,
            "after keep_warm: decommission failed: deploy #2 is putting v3 on blue; not stopping it"
        );
    }
}
