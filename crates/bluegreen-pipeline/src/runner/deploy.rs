//! Step 1: put the version on the idle side (the supervisor or a hook).

use super::*;

/// Step 1: put the version on the idle side.
pub(super) async fn deploy(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let side = d.target;
    if p.router.live() == side {
        return StepEnd::End(
            Outcome::Failed,
            format!("{side} is live; refusing to deploy over the live side"),
        );
    }
    // The idle side may still be draining live traffic from the last switch.
    let drain = p.router.config().switch.drain_timeout;
    if !p.router.wait_drained(side, drain).await {
        log(
            p,
            format!("{side} still had live traffic draining after {drain:?}; continuing"),
        )
        .await;
    }
    // An earlier release's time with both sides up ends here (its side is
    // replaced now): this deploy's record counts from this step.
    for s in p
        .book
        .lock()
        .await
        .history
        .iter_mut()
        .filter_map(|r| r.side_by_side.as_mut())
    {
        s.settle(
            Some(now_ms()),
            format!("{side} was taken over by deploy #{}", d.id),
        );
    }
    let upstreams = p.router.config().environments[side].upstreams.clone();
    let detail = match (&p.config().method, &p.supervisor) {
        (DeployMethod::Supervisor(_), Some(sup)) => {
            let started = tokio::select! {
                r = sup.deploy(side, &d.version, &upstreams, &d.options.env) => r,
                _ = handle.abort.cancelled() => return StepEnd::End(Outcome::Aborted, aborted(handle)),
            };
            match started {
                Ok(procs) => {
                    for pr in &procs {
                        log(
                            p,
                            format!(
                                "started {} for {} (pid {}), log {}",
                                d.version,
                                pr.address,
                                pr.pid,
                                pr.log.display()
                            ),
                        )
                        .await;
                    }
                    format!("{} on {side}: {} process(es)", d.version, procs.len())
                }
                Err(e) => {
                    return StepEnd::End(
                        Outcome::Failed,
                        format!("could not start {}: {e}", d.version),
                    )
                }
            }
        }
        (DeployMethod::Hooks { deploy, .. }, _) => {
            let list = upstreams.join(",");
            let vars = [
                ("env", side.as_str()),
                ("version", d.version.as_str()),
                ("upstreams", list.as_str()),
                ("bluegreen", crate::exe()),
            ];
            let argv = deploy.render(&vars);
            let call = HookCall::new(p, argv, side, &d.version, &d.options.env);
            if let Err(e) = call.run(p, &handle.abort).await {
                return StepEnd::End(
                    if handle.abort.is_cancelled() {
                        Outcome::Aborted
                    } else {
                        Outcome::Failed
                    },
                    format!("deploy hook: {e}"),
                );
            }
            format!("deploy hook put {} on {side}", d.version)
        }
        _ => return StepEnd::End(Outcome::Failed, "the supervisor is not running".into()),
    };
    // Health known so far describes the previous version: start over.
    p.router.reset_health(side);
    let mut book = p.book.lock().await;
    book.sides[side] = SideRelease {
        version: Some(d.version.clone()),
        running: true,
    };
    drop(book);
    StepEnd::Done(Some(detail))
}
