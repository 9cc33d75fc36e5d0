//! Steps 2 and 3: the idle side healthy, then its smoke tests through the
//! preview listener.

use super::*;

/// Step 2: every upstream of the idle side healthy, within `deploy_timeout`.
pub(super) async fn health(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    wait_healthy(p, handle, d.target, Step::Health).await
}

/// Waits until every upstream of `side` is healthy, within `deploy_timeout`,
/// showing progress on `step`.
pub(super) async fn wait_healthy(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    side: Side,
    step: Step,
) -> StepEnd {
    let limit = p.config().deploy_timeout;
    let started = Instant::now();
    let mut last = (usize::MAX, 0);
    loop {
        let (healthy, total, detail) = p.router.side_health(side);
        if healthy == total {
            return StepEnd::Done(Some(format!(
                "{total}/{total} upstreams of {side} healthy after {:.1}s",
                started.elapsed().as_secs_f64()
            )));
        }
        if started.elapsed() >= limit {
            let trouble = p
                .supervisor
                .as_ref()
                .and_then(|s| s.trouble(side))
                .map(|t| format!("; {t}"))
                .unwrap_or_default();
            return StepEnd::End(
                Outcome::Failed,
                format!("health gate: {healthy}/{total} upstreams of {side} healthy after {}s (deploy_timeout): {detail}{trouble}", limit.as_secs()),
            );
        }
        if (healthy, total) != last {
            note(p, step, format!("waiting: {healthy}/{total} healthy")).await;
            last = (healthy, total);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = handle.abort.cancelled() => return StepEnd::End(Outcome::Aborted, aborted(handle)),
        }
    }
}

/// Step 3: smoke tests through the preview listener.
pub(super) async fn smoke_tests(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    d: &DeployRecord,
) -> StepEnd {
    if p.config().smoke.is_empty() {
        return StepEnd::Skipped("no smoke tests configured".into());
    }
    let target = SmokeTarget {
        addr: preview_addr(p).await,
        listener: "proxy.preview_listen",
        side: d.target,
        version: &d.version,
        env: &d.options.env,
        url_label: "preview",
    };
    match run_smoke(p, handle, &target).await {
        Ok(n) => StepEnd::Done(Some(format!("{n} smoke test(s) passed"))),
        Err(end) => end,
    }
}

/// Where smoke tests go: the preview listener (the idle side), or the live
/// listener (the old version, after an expand migration).
pub(super) struct SmokeTarget<'a> {
    pub addr: Option<std::net::SocketAddr>,
    /// The config key of that listener, for the message when it is missing.
    pub listener: &'static str,
    pub side: Side,
    pub version: &'a str,
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// Log prefix.
    pub url_label: &'static str,
}

/// Runs every smoke test against `t`; the number passed, or how the step ends.
pub(super) async fn run_smoke(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    t: &SmokeTarget<'_>,
) -> Result<usize, StepEnd> {
    let env = t.side.as_str();
    for check in &p.config().smoke {
        let result = match check {
            SmokeCheck::Http(h) => {
                let Some(addr) = t.addr else {
                    return Err(StepEnd::End(
                        Outcome::Failed,
                        format!("smoke tests need {}", t.listener),
                    ));
                };
                let vars = [("version", t.version), ("env", env)];
                tokio::select! {
                    r = smoke::http_check(h, addr, &vars) => r,
                    _ = handle.abort.cancelled() => return Err(StepEnd::End(Outcome::Aborted, aborted(handle))),
                }
            }
            SmokeCheck::Command { name, command } => {
                let url = t.addr.map(|a| format!("http://{a}")).unwrap_or_default();
                let argv = command.render(&[
                    ("env", env),
                    ("version", t.version),
                    ("preview_url", &url),
                    ("bluegreen", crate::exe()),
                ]);
                HookCall::new(p, argv, t.side, t.version, t.env)
                    .run(p, &handle.abort)
                    .await
                    .map(|()| format!("{name:?}: command passed"))
                    .map_err(|e| smoke::SmokeFailure {
                        check: name.clone(),
                        what: e.to_string(),
                    })
            }
        };
        match result {
            Ok(line) => log(p, format!("smoke ({}): {line}", t.url_label)).await,
            Err(e) if handle.abort.is_cancelled() => {
                return Err(StepEnd::End(
                    Outcome::Aborted,
                    format!("{} ({e})", aborted(handle)),
                ))
            }
            Err(e) => return Err(StepEnd::End(Outcome::Failed, e.to_string())),
        }
    }
    Ok(p.config().smoke.len())
}

/// The preview listener's address, where the idle side answers.
pub(super) async fn preview_addr(p: &Pipeline) -> Option<std::net::SocketAddr> {
    p.router.listener_addr("preview")
}
