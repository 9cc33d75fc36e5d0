//! Executes a deploy's steps in order. Each step is persisted as running
//! before it starts and as done (or failed) after; after a crash the runner
//! re-runs the step that was running, and every step is written so that
//! running it twice is safe.

use crate::{command, now_ms, smoke, Pipeline, PipelineError, RunHandle};
use bluegreen_core::bake::{BakeWindows, Verdict, Window, WindowEnd};
use bluegreen_core::config::deploy::{DeployMethod, SmokeCheck};
use bluegreen_core::deploy::{
    DeployRecord, Outcome, PendingDecommission, SideRelease, Step, StepState,
};
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_router::shadow::ShadowOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a step ended, when it did not simply finish.
enum StepEnd {
    Done(Option<String>),
    Skipped(String),
    /// The deploy ends here with this outcome.
    End(Outcome, String),
}

/// Runs the current deploy to its end.
pub(crate) async fn run(p: Arc<Pipeline>, handle: Arc<RunHandle>) {
    loop {
        let Some(record) = p.book.lock().await.current.clone() else {
            return;
        };
        if record.id != handle.id || record.is_finished() {
            return;
        }
        let Some(step) = record.next_step() else {
            finish(&p, Outcome::Succeeded, None).await;
            return;
        };
        let started = update(&p, |d| d.start(step, now_ms())).await;
        let end = match started {
            Err(e) => StepEnd::End(
                Outcome::Failed,
                format!("{e}; {} was not run", step.as_str()),
            ),
            Ok(()) => {
                failpoint(step, "start");
                exec(&p, &handle, &record, step).await
            }
        };
        let recorded = match &end {
            StepEnd::Done(detail) => update(&p, |d| d.finish(step, detail.clone(), now_ms())).await,
            StepEnd::Skipped(why) => update(&p, |d| d.skip(step, why, now_ms())).await,
            StepEnd::End(..) => Ok(()),
        };
        let end = match recorded {
            Ok(()) => end,
            // Once the switch happened, a deploy that cannot be recorded must
            // not stay live unjudged: traffic goes back to the old side.
            Err(e) if step == Step::Switch || step.after_switch() => {
                let why = format!("{e} after {} ended", step.as_str());
                match p.switch_back(&record, SwitchKind::Rollback, &why).await {
                    Ok(_) => StepEnd::End(
                        Outcome::Failed,
                        format!("{why}; traffic is back on {}", record.from),
                    ),
                    Err(s) => StepEnd::End(
                        Outcome::Failed,
                        format!("{why}; switching back failed too: {s}"),
                    ),
                }
            }
            Err(e) => StepEnd::End(
                Outcome::Failed,
                format!("{e} after {} ended", step.as_str()),
            ),
        };
        if let StepEnd::End(outcome, reason) = end {
            tracing::warn!(id = record.id, step = step.as_str(), outcome = crate::outcome_name(outcome), %reason, "deploy ended");
            touch(&p, |d| d.end(Some(step), outcome, reason.clone(), now_ms())).await;
            finish(&p, outcome, Some(reason)).await;
            return;
        }
        failpoint(step, "end");
    }
}

/// Test hook: `BLUEGREEN_CRASH_AT=step:start|end` kills the process with
/// SIGKILL at that point, exactly as `kill -9` would.
fn failpoint(step: Step, point: &str) {
    if let Ok(at) = std::env::var("BLUEGREEN_CRASH_AT") {
        if at == format!("{}:{point}", step.as_str()) {
            eprintln!("BLUEGREEN_CRASH_AT={at}: killing this process");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Applies `f` to the current record and writes the book: resuming after a
/// crash depends on this record, so a failed write is the step's failure.
async fn update(p: &Pipeline, f: impl FnOnce(&mut DeployRecord)) -> Result<(), String> {
    let mut book = p.book.lock().await;
    if let Some(d) = book.current.as_mut() {
        f(d);
        p.router.events.emit("deploy", &*d);
    }
    p.persist(&book)
        .await
        .map_err(|e| format!("could not persist the deploy record: {e}"))
}

/// Applies `f` in memory only (log lines, notes): the next durable update writes it.
async fn touch(p: &Pipeline, f: impl FnOnce(&mut DeployRecord)) {
    let mut book = p.book.lock().await;
    if let Some(d) = book.current.as_mut() {
        f(d);
        p.router.events.emit("deploy", &*d);
    }
}

async fn log(p: &Pipeline, text: String) {
    tracing::info!(target: "deploy", "{text}");
    touch(p, |d| d.log(text, now_ms())).await;
}

async fn note(p: &Pipeline, step: Step, text: String) {
    touch(p, |d| d.note(step, text)).await;
}

/// Sets the outcome, records what each side runs, archives the deploy.
async fn finish(p: &Arc<Pipeline>, outcome: Outcome, reason: Option<String>) {
    let mut book = p.book.lock().await;
    let Some(d) = book.current.as_mut() else {
        return;
    };
    if outcome == Outcome::Succeeded {
        d.succeed(now_ms());
    }
    p.router.events.emit("deploy", &*d);
    let id = d.id;
    // What failed stays up for a look, then stops: never forever on the idle side.
    // Only when the deploy step began: before it, the target still runs the
    // previous (good) release, which must stay for an instant rollback.
    let replaced = d.step(Step::Deploy).state != StepState::Pending;
    let leftover =
        (outcome != Outcome::Succeeded && replaced && p.router.live() != d.target).then(|| {
            PendingDecommission {
                side: d.target,
                deploy_id: id,
                at_ms: now_ms() + p.config.keep_failed.as_millis() as u64,
            }
        });
    if let Some(pending) = &leftover {
        d.log(
            format!(
                "{} on {} will be stopped in {}s (keep_failed)",
                d.version,
                d.target,
                p.config.keep_failed.as_secs()
            ),
            now_ms(),
        );
        book.pending_decommission = Some(pending.clone());
    }
    book.archive_current();
    if let Err(e) = p.persist(&book).await {
        tracing::error!(error = %e, "could not persist the finished deploy");
    }
    drop(book);
    if let Some(pending) = leftover {
        p.arm_decommission(pending);
    }
    let mut run = p.run.lock().unwrap_or_else(|x| x.into_inner());
    if run.as_ref().is_some_and(|h| h.id == id) {
        *run = None;
    }
    tracing::info!(
        id,
        outcome = crate::outcome_name(outcome),
        reason = reason.unwrap_or_default(),
        "deploy finished"
    );
}

fn aborted(handle: &RunHandle) -> String {
    let why = handle
        .abort_reason
        .lock()
        .unwrap_or_else(|x| x.into_inner())
        .clone()
        .unwrap_or_else(|| "aborted".into());
    format!("aborted: {why}")
}

async fn exec(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord, step: Step) -> StepEnd {
    if handle.abort.is_cancelled() && !step.after_switch() {
        return StepEnd::End(Outcome::Aborted, aborted(handle));
    }
    match step {
        Step::Deploy => deploy(p, handle, d).await,
        Step::Health => health(p, handle, d).await,
        Step::Smoke => smoke_tests(p, handle, d).await,
        Step::Warm => warm(p, handle, d).await,
        Step::Shadow => shadow(p, handle, d).await,
        Step::Gate => gate(p, handle, d).await,
        Step::Switch => switch(p, handle, d).await,
        Step::Bake => bake(p, handle, d).await,
        Step::Decommission => decommission_step(p, d).await,
    }
}

/// Step 2: put the version on the idle side.
async fn deploy(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
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
    let upstreams = p.router.config().environments[side].upstreams.clone();
    let detail = match (&p.config.method, &p.supervisor) {
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
            if let Err(e) = run_hook(
                p,
                &handle.abort,
                &argv,
                side,
                &d.version,
                &list,
                &d.options.env,
            )
            .await
            {
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

#[allow(clippy::too_many_arguments)]
async fn run_hook(
    p: &Arc<Pipeline>,
    cancel: &tokio_util::sync::CancellationToken,
    argv: &[String],
    side: Side,
    version: &str,
    upstreams: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let limit = p.config.hook_timeout;
    run_hook_for(p, cancel, argv, side, version, upstreams, extra, limit).await
}

/// [`run_hook`] with its own time limit.
#[allow(clippy::too_many_arguments)]
async fn run_hook_for(
    p: &Arc<Pipeline>,
    cancel: &tokio_util::sync::CancellationToken,
    argv: &[String],
    side: Side,
    version: &str,
    upstreams: &str,
    extra: &std::collections::BTreeMap<String, String>,
    limit: Duration,
) -> Result<(), String> {
    let mut env: Vec<(String, String)> = vec![
        ("BLUEGREEN_ENV".into(), side.as_str().into()),
        ("BLUEGREEN_VERSION".into(), version.into()),
        ("BLUEGREEN_UPSTREAMS".into(), upstreams.into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forward = {
        let p = p.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                log(&p, format!("| {line}")).await;
            }
        })
    };
    let result = command::run(argv, &p.config.workdir, &env, limit, cancel, |l| {
        let _ = tx.send(l);
    })
    .await;
    drop(tx);
    let _ = forward.await;
    result
}

/// Step 3: every upstream of the idle side healthy, within `deploy_timeout`.
async fn health(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    wait_healthy(p, handle, d.target, Step::Health).await
}

/// Waits until every upstream of `side` is healthy, within `deploy_timeout`,
/// showing progress on `step`.
async fn wait_healthy(p: &Arc<Pipeline>, handle: &RunHandle, side: Side, step: Step) -> StepEnd {
    let limit = p.config.deploy_timeout;
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

/// Step 4: smoke tests through the preview listener.
async fn smoke_tests(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    if p.config.smoke.is_empty() {
        return StepEnd::Skipped("no smoke tests configured".into());
    }
    let preview = preview_addr(p).await;
    let env = d.target.as_str();
    for check in &p.config.smoke {
        let result = match check {
            SmokeCheck::Http(h) => {
                let Some(addr) = preview else {
                    return StepEnd::End(
                        Outcome::Failed,
                        "smoke tests need proxy.preview_listen".into(),
                    );
                };
                let vars = [("version", d.version.as_str()), ("env", env)];
                tokio::select! {
                    r = smoke::http_check(h, addr, &vars) => r,
                    _ = handle.abort.cancelled() => return StepEnd::End(Outcome::Aborted, aborted(handle)),
                }
            }
            SmokeCheck::Command { name, command } => {
                let url = preview.map(|a| format!("http://{a}")).unwrap_or_default();
                let argv = command.render(&[
                    ("env", env),
                    ("version", &d.version),
                    ("preview_url", &url),
                    ("bluegreen", crate::exe()),
                ]);
                let list = p.router.config().environments[d.target].upstreams.join(",");
                run_hook(
                    p,
                    &handle.abort,
                    &argv,
                    d.target,
                    &d.version,
                    &list,
                    &d.options.env,
                )
                .await
                .map(|()| format!("{name:?}: command passed"))
                .map_err(|e| format!("smoke test {name:?} failed: {e}"))
            }
        };
        match result {
            Ok(line) => log(p, format!("smoke: {line}")).await,
            Err(e) if handle.abort.is_cancelled() => {
                return StepEnd::End(Outcome::Aborted, format!("{} ({e})", aborted(handle)))
            }
            Err(e) => return StepEnd::End(Outcome::Failed, e),
        }
    }
    StepEnd::Done(Some(format!(
        "{} smoke test(s) passed",
        p.config.smoke.len()
    )))
}

/// The preview listener's address, where the idle side answers.
async fn preview_addr(p: &Pipeline) -> Option<std::net::SocketAddr> {
    p.router
        .status()
        .await
        .listeners
        .get("preview")
        .and_then(|a| a.parse().ok())
}

/// Step 4b: replay recorded traffic straight to the idle side's upstreams
/// (each request marked `X-Bluegreen-Replay: 1`, which the router would
/// strip), so its caches are warm before it takes live traffic.
async fn warm(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let Some(w) = &p.config.warm else {
        return StepEnd::Skipped("no [deploy.warm] configured".into());
    };
    let list = p.router.config().environments[d.target].upstreams.join(",");
    let targets: Vec<String> = p.router.config().environments[d.target]
        .upstreams
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    let mut argv: Vec<String> = vec![
        crate::exe().into(),
        "replay".into(),
        w.file.display().to_string(),
        "--target".into(),
        targets.join(","),
        "--speed".into(),
        w.speed.clone(),
        "--concurrency".into(),
        w.concurrency.to_string(),
        "--methods".into(),
        w.methods.join(","),
    ];
    if let Some(l) = w.loop_for {
        argv.push("--loop-for".into());
        argv.push(format!("{}ms", l.as_millis()));
    }
    // A loop runs as long as it was told to; the hook limit applies on top.
    let limit = p.config.hook_timeout + w.loop_for.unwrap_or_default();
    match run_hook_for(
        p,
        &handle.abort,
        &argv,
        d.target,
        &d.version,
        &list,
        &d.options.env,
        limit,
    )
    .await
    {
        Ok(()) => StepEnd::Done(Some(format!("replayed {}", w.file.display()))),
        Err(e) if handle.abort.is_cancelled() => {
            StepEnd::End(Outcome::Aborted, format!("{} ({e})", aborted(handle)))
        }
        Err(e) => StepEnd::End(
            Outcome::Failed,
            format!("warm-up replay of {} failed: {e}", w.file.display()),
        ),
    }
}

/// Step 4c: mirror live traffic to the idle side for a while and judge the
/// differences; the deploy fails when an endpoint differs too often or the
/// idle side is too slow.
async fn shadow(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let Some(step) = &p.config.shadow else {
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
    let run = match p.router.start_shadow(options.clone()).await {
        Ok(r) => r,
        Err(_) if p.router.stop_shadow().await.is_ok() => {
            log(
                p,
                "stopped a manual shadow run to start the deploy's own".into(),
            )
            .await;
            match p.router.start_shadow(options.clone()).await {
                Ok(r) => r,
                Err(e) => return StepEnd::End(Outcome::Failed, e),
            }
        }
        Err(e) => return StepEnd::End(Outcome::Failed, e),
    };
    let started = tokio::time::Instant::now();
    let deadline = started + step.duration;
    let target = step.requests.unwrap_or(u64::MAX);
    let mut cut_short = false;
    loop {
        let r = run.report();
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
            break;
        }
        if run.stopped() {
            // A switch or `bluegreen shadow stop` ended the run early.
            cut_short = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = handle.abort.cancelled() => {
                p.router.stop_shadow_run(&run).await;
                return StepEnd::End(Outcome::Aborted, aborted(handle));
            }
        }
    }
    p.router.stop_shadow_run(&run).await;
    // Copies already sent are compared before judging.
    let settle = tokio::time::Instant::now() + Duration::from_millis(options.timeout_ms);
    while run.in_flight() > 0 && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = run.report();
    if cut_short {
        return StepEnd::End(
            Outcome::Failed,
            format!(
                "the shadow run was stopped before the step finished (a switch or `bluegreen shadow stop`), after {} pairs",
                r.totals.compared
            ),
        );
    }
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
    match bluegreen_core::shadow::judge(&step.gate, &r.totals, &r.endpoints) {
        Ok(summary) => StepEnd::Done(Some(summary)),
        Err(why) => StepEnd::End(Outcome::Failed, why),
    }
}

/// Step 5: automatic, or wait for `promote`.
async fn gate(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    if !d.options.manual_promote {
        return StepEnd::Done(Some("automatic".into()));
    }
    note(p, Step::Gate, "waiting for `bluegreen promote`".into()).await;
    let limit = p.config.promote_timeout.unwrap_or(Duration::MAX / 4);
    tokio::select! {
        _ = handle.promote.notified() => StepEnd::Done(Some("promoted".into())),
        _ = handle.abort.cancelled() => StepEnd::End(Outcome::Aborted, aborted(handle)),
        _ = tokio::time::sleep(limit) => StepEnd::End(Outcome::Aborted, format!("no promote within {}s (promote_timeout)", limit.as_secs())),
    }
}

/// Step 6: the atomic switch, with the old side's baseline taken just before.
async fn switch(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    if p.router.live() == d.target {
        return StepEnd::Done(Some(format!("{} is already live", d.target)));
    }
    // After a restart the health of the target is not known yet; the switch
    // waits for fresh checks instead of being refused.
    if let end @ StepEnd::End(..) = wait_healthy(p, handle, d.target, Step::Switch).await {
        return end;
    }
    let baseline = p.router.live_window(d.from).since(&handle.baseline_start);
    if let Err(e) = update(p, |r| r.baseline = Some(baseline.clone())).await {
        return StepEnd::End(Outcome::Failed, e);
    }
    let result = p
        .router
        .switch(SwitchRequest {
            to: d.target,
            kind: SwitchKind::Switch,
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

fn describe(w: &Window) -> String {
    match w.p99() {
        Some(p99) => format!(
            "{} requests, {:.2}% errors, p99 {:.1} ms",
            w.requests,
            w.error_rate() * 100.0,
            p99.as_secs_f64() * 1000.0
        ),
        None => format!("{} requests", w.requests),
    }
}

/// Step 7: watch the new side. Every 100 ms the current window is judged
/// (`core::bake::BakeWindows`): an error-rate breach rolls back at once; a
/// latency breach only once it held `consecutive` whole windows; a window
/// too small for its p99 keeps growing instead of closing. Notes describe
/// the window judged, not running totals.
async fn bake(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let cfg = &p.config.bake;
    let start = p.router.live_window(d.target);
    let mut windows = BakeWindows::new(start.clone(), cfg.consecutive);
    let mut opened = Instant::now();
    let end = Instant::now() + cfg.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(100).min(cfg.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = handle.abort.cancelled() => {
                let why = aborted(handle);
                return match p.switch_back(d, SwitchKind::Rollback, &why).await {
                    Ok(_) => StepEnd::End(Outcome::Aborted, format!("{why}; traffic is back on {}", d.from)),
                    Err(e) => StepEnd::End(Outcome::Aborted, format!("{why}; switching back failed: {e}")),
                };
            }
        }
        let closing = opened.elapsed() >= cfg.interval;
        let took = opened.elapsed();
        let now = p.router.live_window(d.target);
        match windows.observe(&now, d.baseline.as_ref(), &cfg.thresholds, closing) {
            WindowEnd::Open => {}
            WindowEnd::Closed {
                number,
                window,
                verdict,
                detail,
            } => {
                opened = Instant::now();
                let word = match verdict {
                    Verdict::Pass => "ok",
                    Verdict::NotEnoughTraffic => "waiting",
                    _ => "inconclusive",
                };
                let text = match verdict {
                    Verdict::NotEnoughTraffic => format!(
                        "waiting for traffic: {} of {} requests",
                        window.requests, cfg.thresholds.min_requests
                    ),
                    _ => format!(
                        "window {number} ({:.1}s): {}{}",
                        took.as_secs_f64(),
                        describe(&window),
                        detail.map(|x| format!("; {x}")).unwrap_or_default()
                    ),
                };
                p.router.events.emit(
                    "bake",
                    serde_json::json!({"deploy_id": d.id, "verdict": word, "detail": text}),
                );
                note(p, Step::Bake, text).await;
            }
            WindowEnd::Breach(b) => {
                let reason = format!("bake: {}", b.summary);
                p.router.events.emit(
                    "bake",
                    serde_json::json!({"deploy_id": d.id, "verdict": "breach", "detail": b.summary, "breach": b}),
                );
                // The rollback comes first; the breach is written with the outcome.
                touch(p, |r| r.breach = Some(b.clone())).await;
                let t = Instant::now();
                return match p.switch_back(d, SwitchKind::Rollback, &reason).await {
                    Ok(o) => {
                        log(
                            p,
                            format!(
                                "rolled back to {} in {:.1} ms (generation {})",
                                d.from,
                                t.elapsed().as_secs_f64() * 1000.0,
                                o.generation
                            ),
                        )
                        .await;
                        StepEnd::End(Outcome::RolledBack, reason)
                    }
                    Err(e) => {
                        StepEnd::End(Outcome::Failed, format!("{reason}; rollback failed: {e}"))
                    }
                };
            }
        }
        if Instant::now() >= end {
            let total = p.router.live_window(d.target).since(&start);
            return StepEnd::Done(Some(format!(
                "passed{}: {}",
                windows.caveat(),
                describe(&total)
            )));
        }
    }
}

/// Step 8: stop the old side, or schedule it after `keep_warm`.
async fn decommission_step(p: &Arc<Pipeline>, d: &DeployRecord) -> StepEnd {
    let old = d.from;
    if p.router.live() == old {
        return StepEnd::Skipped(format!("{old} is live; not stopping it"));
    }
    if !p.config.keep_warm.is_zero() {
        let pending = PendingDecommission {
            side: old,
            deploy_id: d.id,
            at_ms: now_ms() + p.config.keep_warm.as_millis() as u64,
        };
        let mut book = p.book.lock().await;
        book.pending_decommission = Some(pending.clone());
        drop(book);
        p.arm_decommission(pending);
        return StepEnd::Done(Some(format!(
            "{old} kept warm for {}s so rollback stays instant; then stopped",
            p.config.keep_warm.as_secs()
        )));
    }
    match decommission(p, old, None).await {
        Ok(detail) => StepEnd::Done(Some(detail)),
        // The release is live and good; a failed clean-up does not undo it.
        Err(e) => StepEnd::Done(Some(format!("decommission of {old} failed: {e}"))),
    }
}

/// Stops a side that is not live: waits for its drain, then the supervisor
/// or the decommission hook.
/// With `expect`, only while that scheduled stop is still the pending one.
async fn decommission(
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
    let stopped = match (&p.config.method, &p.supervisor) {
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
            let never = tokio_util::sync::CancellationToken::new();
            run_hook(p, &never, &argv, side, &version, &list, &Default::default())
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
    let mut book = p.book.lock().await;
    if book.pending_decommission.as_ref() == Some(pending) {
        book.pending_decommission = None;
    }
    let text = match &result {
        Ok(s) => format!("after keep_warm: {s}"),
        Err(e) => format!("after keep_warm: decommission failed: {e}"),
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
