//! Steps 6 and 7: the gate (automatic or `promote`), then the switch.

use super::bake::describe;
use super::checks::wait_healthy;
use super::*;

/// Step 6: automatic, or wait for `promote`.
pub(super) async fn gate(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    if let Some(gate) = p.config().gate.clone() {
        return super::approval::ask_until_answered(p, handle, d, &gate).await;
    }
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
        return StepEnd::End(Outcome::Failed, e.to_string());
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

#[cfg(test)]
mod tests {
    //! The gate and the switch in process, against `runner::fake`: blue
    //! (v1) is live, the deploy puts v2 on green.

    use super::super::fake::{setup, Extra, GOOD};
    use super::*;
    use bluegreen_core::deploy::DeployOptions;

    async fn deploying(live: Side, options: DeployOptions) -> super::super::fake::Setup {
        setup(live, GOOD, GOOD, Extra::default(), options).await
    }

    #[tokio::test]
    async fn the_gate_is_automatic_unless_asked_and_then_waits_for_promote_or_abort() {
        let s = deploying(Side::Blue, DeployOptions::default()).await;
        let end = gate(&s.p, &s.handle, &s.d).await;
        assert!(
            matches!(&end, StepEnd::Done(Some(t)) if t == "automatic"),
            "{end:?}"
        );

        let manual = DeployOptions {
            manual_promote: true,
            ..Default::default()
        };
        let s = deploying(Side::Blue, manual.clone()).await;
        s.handle.promote.notify_one();
        let end = gate(&s.p, &s.handle, &s.d).await;
        assert!(
            matches!(&end, StepEnd::Done(Some(t)) if t == "promoted"),
            "{end:?}"
        );
        let r = s.p.book.lock().await.current.clone().unwrap();
        assert_eq!(
            r.step(Step::Gate).detail.as_deref(),
            Some("waiting for `bluegreen promote`")
        );

        let s = deploying(Side::Blue, manual).await;
        *s.handle.abort_reason.lock().unwrap() = Some("wrong build".into());
        s.handle.abort.cancel();
        let end = gate(&s.p, &s.handle, &s.d).await;
        assert!(
            matches!(&end, StepEnd::End(Outcome::Aborted, why) if why == "aborted: wrong build"),
            "{end:?}"
        );
        assert!(s.fake.switched_to().is_empty());
    }

    #[tokio::test]
    async fn the_switch_takes_the_baseline_first_then_switches_once_as_the_deploy() {
        let s = deploying(Side::Blue, DeployOptions::default()).await;
        let end = switch(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::Done(Some(t)) => assert!(t.contains("; baseline "), "{t}"),
            other => panic!("{other:?}"),
        }
        let switches = s.fake.switches.lock().unwrap().clone();
        assert_eq!(switches.len(), 1, "{switches:?}");
        let asked = &switches[0];
        assert_eq!(
            (asked.to, asked.kind, asked.forced, asked.actor.as_str()),
            (Side::Green, SwitchKind::Switch, false, "deploy #1")
        );
        assert_eq!(asked.reason, "deploy v2");
        let r = s.p.book.lock().await.current.clone().unwrap();
        assert!(r.baseline.is_some(), "the old side's baseline is kept");
        assert!(r.baseline_dispersion.is_some());

        // Run again (a resumed deploy): already live, nothing switched.
        let end = switch(&s.p, &s.handle, &s.d).await;
        assert!(
            matches!(&end, StepEnd::Done(Some(t)) if t == "green is already live"),
            "{end:?}"
        );
        assert_eq!(s.fake.switched_to(), [Side::Green]);
    }

    /// A re-deploying rollback switches as a rollback: nobody is kept on
    /// the side it leaves (the rejected version).
    #[tokio::test]
    async fn a_redeploying_rollback_switches_as_a_rollback() {
        let options = DeployOptions {
            reason: "rollback: green v2 was bad".into(),
            ..Default::default()
        };
        let s = deploying(Side::Blue, options).await;
        let end = switch(&s.p, &s.handle, &s.d).await;
        assert!(matches!(end, StepEnd::Done(_)), "{end:?}");
        assert_eq!(
            s.fake.switches.lock().unwrap()[0].kind,
            SwitchKind::Rollback
        );
    }

    #[tokio::test]
    async fn a_refused_switch_fails_the_deploy_and_leaves_live_alone() {
        let s = deploying(Side::Blue, DeployOptions::default()).await;
        *s.fake.switch_fails.lock().unwrap() = Some("etcd is unreachable".into());
        let end = switch(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::Failed, why) => assert_eq!(
                why,
                "switch refused, live side unchanged: etcd is unreachable"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(*s.fake.live.lock().unwrap(), Side::Blue);
    }
}
