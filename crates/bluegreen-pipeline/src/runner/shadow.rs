//! Step 5: shadow live traffic to the idle side and judge the answers.

use super::*;
use bluegreen_core::shadow::Gate as ShadowGate;
use bluegreen_router::shadow::{Shadow, ShadowReport};
use bluegreen_router::ControlError;

/// Step 5: mirror live traffic to the idle side for a while and judge the
/// differences; the deploy fails when an endpoint differs too often or the
/// idle side is too slow.
pub(super) async fn shadow(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let Some(step) = &p.config().shadow else {
        return StepEnd::Skipped("no [deploy.shadow] configured".into());
    };
    if p.router.live() == d.target {
        return StepEnd::Skipped(format!("{} is already live", d.target));
    }
    // Nothing live answers (the very first deploy): no pairs to compare.
    if !p.router.ready() {
        let first = if d.previous_version.is_none() {
            "first deploy: "
        } else {
            ""
        };
        return StepEnd::Skipped(format!(
            "{first}no healthy upstream on {} (live) to compare with",
            d.from
        ));
    }
    let mut options = ShadowOptions::from_config(&p.router.config().shadow);
    if let Some(pc) = step.percent {
        options.percent = pc;
    }
    options.requests = step.requests;
    let run = match start(p, &options).await {
        Ok(run) => run,
        Err(end) => return end,
    };
    // In a cluster every node shadows its own share of live traffic and
    // the gate judges their sum (`report_with` the other nodes' shares).
    let shared = now_ms();
    let until_ms = shared
        + (step.duration + Duration::from_millis(options.timeout_ms)).as_millis() as u64
        + 10_000;
    p.router.share_shadow(shared, &run, true, until_ms).await;
    let shares = || -> Vec<_> {
        p.router
            .shadow_shares(shared)
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    };
    let report = || run.report_with(&shares());
    let deadline = tokio::time::Instant::now() + step.duration;
    let target = step.requests.unwrap_or(u64::MAX);
    let watched = watch(p, handle, &run, &report, deadline, target).await;
    if matches!(watched, Watched::Aborted) {
        p.router.stop_shadow_run(&run).await;
        p.router.share_shadow(shared, &run, false, until_ms).await;
        p.router.end_shared_shadow().await;
        return StepEnd::End(Outcome::Aborted, aborted(handle));
    }
    let cut_short = matches!(watched, Watched::CutShort);
    p.router.stop_shadow_run(&run).await;
    p.router.share_shadow(shared, &run, false, until_ms).await;
    // Copies already sent are compared before judging, here and on the
    // other nodes (whose last counts come with their next report).
    let settle = Duration::from_millis(options.timeout_ms);
    let until = tokio::time::Instant::now() + settle;
    while run.in_flight() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.router
        .shadow_settled(shared, settle + Duration::from_secs(2))
        .await;
    let r = report();
    let others: Vec<String> = p
        .router
        .shadow_shares(shared)
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    p.router.end_shared_shadow().await;
    // Whose traffic was judged, in a cluster.
    let judged = p.router.cluster().map(|c| {
        let mut nodes = vec![c.node().to_string()];
        nodes.extend(others);
        format!(
            " (the live traffic of {} node(s): {})",
            nodes.len(),
            nodes.join(", ")
        )
    });
    if cut_short {
        return StepEnd::End(
            Outcome::Failed,
            format!(
                "the shadow run was stopped before the step finished (a switch or `bluegreen shadow stop`), after {} pairs",
                r.totals.compared
            ),
        );
    }
    verdict(p, &step.gate, &r, judged.unwrap_or_default()).await
}

/// Starts the deploy's shadow run; a manual run in the way is stopped first.
async fn start(p: &Arc<Pipeline>, options: &ShadowOptions) -> Result<Arc<Shadow>, StepEnd> {
    let failed = |e: ControlError| StepEnd::End(Outcome::Failed, e.to_string());
    match p.router.start_shadow(options.clone()).await {
        Ok(r) => Ok(r),
        Err(_) if p.router.stop_shadow().await.is_ok() => {
            log(
                p,
                "stopped a manual shadow run to start the deploy's own".into(),
            )
            .await;
            p.router.start_shadow(options.clone()).await.map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// The run's report judged: too many copies dropped (the idle side too
/// slow), then the gate's limits; the differing endpoints go to the log.
/// `judged` says whose traffic it was (a cluster).
async fn verdict(
    p: &Arc<Pipeline>,
    gate: &ShadowGate,
    r: &ShadowReport,
    mut judged: String,
) -> StepEnd {
    // A slow idle side shows as copies dropped at the full queue.
    let offered = r.mirrored + r.dropped;
    if r.dropped * 10 > offered {
        return StepEnd::End(
            Outcome::Failed,
            format!(
                "the idle side could not keep up with shadow traffic: {} of {offered} copies dropped (idle p99 {}, live p99 {})",
                r.dropped,
                r.totals.idle.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
                r.totals.live.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
            ),
        );
    }
    for e in r.endpoints.iter().filter(|e| e.differing > 0).take(5) {
        let field = e.fields.first().map_or(String::new(), |f| {
            let x = f.examples.first();
            format!(
                "; top field {} ×{} (e.g. {}: live {} | idle {})",
                f.field,
                f.count,
                x.map_or("-", |x| x.request.as_str()),
                x.map_or("-", |x| x.live.as_str()),
                x.map_or("-", |x| x.idle.as_str())
            )
        });
        log(
            p,
            format!(
                "shadow: {} {} of {} differ{field}",
                e.endpoint, e.differing, e.requests
            ),
        )
        .await;
    }
    if !r.accepted.is_empty() {
        judged.push_str(&format!(
            "; accepted as intended: {}",
            r.accepted.join(", ")
        ));
    }
    match bluegreen_core::shadow::judge(gate, &r.totals, &r.endpoints) {
        Ok(summary) => StepEnd::Done(Some(format!("{summary}{judged}"))),
        Err(why) => StepEnd::End(Outcome::Failed, format!("{why}{judged}")),
    }
}

/// How watching a shadow run ended.
enum Watched {
    /// It has its pairs, completed, or the step's time is up.
    Done,
    /// A switch or `bluegreen shadow stop` ended the run early.
    CutShort,
    Aborted,
}

/// Notes the counts every 200 ms until the run ends one of the ways of
/// `Watched`.
async fn watch(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    run: &Shadow,
    report: &(dyn Fn() -> ShadowReport + Sync),
    deadline: tokio::time::Instant,
    target: u64,
) -> Watched {
    loop {
        let r = report();
        note(
            p,
            Step::Shadow,
            format!(
                "{} pairs compared, {} differing, {} dropped",
                r.totals.compared, r.totals.differing, r.dropped
            ),
        )
        .await;
        if r.totals.compared + r.stale >= target || run.complete() {
            return Watched::Done;
        }
        if run.stopped() {
            return Watched::CutShort;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Watched::Done,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = handle.abort.cancelled() => return Watched::Aborted,
        }
    }
}
