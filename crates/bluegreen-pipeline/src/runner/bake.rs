//! Step 8: the bake: watch the new side and roll back on a breach.

use super::analysis::{Judge, Scope};
use super::*;
use bluegreen_core::analysis::{self, Reading};

pub(super) fn describe(w: &Window) -> String {
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

/// A window in numbers, rounded for people.
fn summary(w: &Window) -> serde_json::Value {
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 100_000.0).round() / 100.0);
    serde_json::json!({
        "requests": w.requests,
        "errors": w.errors,
        "error_rate": (w.error_rate() * 10_000.0).round() / 10_000.0,
        "p50_ms": ms(w.latency.quantile(0.5)),
        "p99_ms": ms(w.p99()),
    })
}

/// What the dashboard's release view draws: the window judged beside the
/// old side's baseline, the limits, and when the bake ends.
fn view(
    window: Option<&Window>,
    d: &DeployRecord,
    cfg: &bluegreen_core::config::deploy::BakeConfig,
    ends_at_ms: u64,
    number: Option<u64>,
    report: &[Reading],
) -> serde_json::Value {
    let t = &cfg.thresholds;
    serde_json::json!({
        "report": report,
        "window": window.map(summary),
        "window_number": number,
        "baseline": d.baseline.as_ref().map(summary),
        "thresholds": {
            "min_requests": t.min_requests,
            "max_error_rate": t.max_error_rate,
            "max_p99_ms": t.max_p99.map(|d| d.as_secs_f64() * 1000.0),
            "error_rate_ratio": t.error_rate_ratio,
            "p99_ratio": t.p99_ratio,
        },
        "interval_ms": cfg.interval.as_millis() as u64,
        "ends_at_ms": ends_at_ms,
    })
}

/// Step 8: watch the new side. Every 100 ms the current window is judged
/// (`core::bake::BakeWindows`): an error-rate breach rolls back at once; a
/// latency breach only once it held `consecutive` whole windows; a window
/// too small for its p99 keeps growing instead of closing. Notes describe
/// the window judged, not running totals.
pub(super) async fn bake(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let cfg = &p.config().bake;
    // Where the bake began, kept in the record: resumed (a restart, an
    // upgrade, another node taking over), it still judges all of it.
    let start = match &d.bake_start {
        Some(w) => w.clone(),
        None => {
            let w = p.router.live_window(d.target);
            let kept = w.clone();
            // Written now, not with the next update (a bake has none until
            // it ends): a node that takes over must find it.
            if let Err(e) = update(p, |r| r.bake_start = Some(kept)).await {
                tracing::warn!(error = %e, "the bake's start was not saved; a resumed bake judges from where it resumes");
            }
            w
        }
    };
    let dispersion = d.baseline_dispersion.unwrap_or(1.0);
    let mut windows = BakeWindows::new(start.clone(), cfg.consecutive).with_dispersion(dispersion);
    let mut opened = Instant::now();
    // Resumed (a crash, or a new process after `bluegreen upgrade`): the
    // bake ends at its original time, by the wall clock.
    let started = d
        .steps
        .iter()
        .find(|s| s.step == Step::Bake)
        .and_then(|s| s.started_at_ms)
        .unwrap_or_else(now_ms);
    let left = (started + cfg.duration.as_millis() as u64).saturating_sub(now_ms());
    let mut end = Instant::now() + Duration::from_millis(left);
    // Too little traffic by the end: it waits as long again for more.
    let mut extended = false;
    let ends_at_ms = now_ms() + left;
    p.router.emit(Event::Bake {
        deploy_id: d.id,
        verdict: "waiting",
        detail: format!("baking {} for {:.0} s more", d.target, left as f64 / 1000.0),
        breach: None,
        view: Some(view(None, d, cfg, ends_at_ms, None, &[])),
    });
    // The app's resources and the user's metrics, against the old side
    // while it was live (from the deploy's start to the switch).
    let switched_ms = d.step(Step::Switch).started_at_ms;
    let mut judge = Judge::new(
        p,
        Scope {
            new: (d.target, d.version.clone()),
            base: d.previous_version.clone().map(|v| (d.from, v)),
            new_from_ms: started,
            base_from_ms: d
                .created_at_ms
                .saturating_sub(cfg.baseline.as_millis() as u64),
            base_to_ms: Some(switched_ms.unwrap_or(started)),
        },
    );
    let mut fetch: Option<tokio::task::JoinHandle<Vec<(usize, Reading)>>> = None;
    let mut report: Vec<Reading> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100).min(cfg.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // With several nodes: the sign that this holder is there, without which
    // every node's watchdog judges its own traffic.
    let _beat = crate::watchdog::beat(p);
    loop {
        // Live is not the target any more (a node's watchdog rolled back
        // while this deploy's holder was gone, found on resuming, or just
        // now): the deploy ends rolled back, judged no further.
        if p.router.live() != d.target {
            return rolled_back_elsewhere(p, d).await;
        }
        let mut breached: Option<Reading> = None;
        tokio::select! {
            _ = tick.tick() => {}
            done = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => {
                fetch = None;
                breached = judge.record(done.unwrap_or_default());
            }
            _ = handle.abort.cancelled() => {
                let why = aborted(handle);
                return match p.switch_back(d, SwitchKind::Rollback, &why).await {
                    Ok(_) => StepEnd::End(Outcome::Aborted, format!("{why}; traffic is back on {}", d.from)),
                    Err(e) => StepEnd::End(Outcome::Aborted, format!("{why}; switching back failed: {e}")),
                };
            }
        }
        if let Some(r) = breached {
            return analysis_breach(p, d, &r, &judge, &now_report(p, d, &start, cfg, &judge)).await;
        }
        let closing = opened.elapsed() >= cfg.interval;
        let took = opened.elapsed();
        let now = p.router.live_window(d.target);
        if closing && !judge.is_empty() {
            let (app, external) = judge.look(p);
            if let Some(r) = judge.record(app) {
                return analysis_breach(p, d, &r, &judge, &now_report(p, d, &start, cfg, &judge))
                    .await;
            }
            if fetch.is_none() {
                fetch = external.map(tokio::spawn);
            }
        }
        match windows.observe(&now, d.baseline.as_ref(), &cfg.thresholds, closing) {
            WindowEnd::Open => {}
            WindowEnd::Closed {
                number,
                window,
                verdict,
                detail,
            } => {
                opened = Instant::now();
                report = bluegreen_core::bake::rows(
                    &window,
                    d.baseline.as_ref(),
                    &cfg.thresholds,
                    dispersion,
                );
                report.extend(judge.rows());
                let kept = report.clone();
                touch(p, |r| r.report = kept).await;
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
                p.router.emit(Event::Bake {
                    deploy_id: d.id,
                    verdict: word,
                    detail: text.clone(),
                    breach: None,
                    view: Some(view(
                        Some(&window),
                        d,
                        cfg,
                        ends_at_ms,
                        Some(number as u64),
                        &report,
                    )),
                });
                note(p, Step::Bake, text).await;
            }
            WindowEnd::Breach(b) => {
                let reason = format!("bake: {}", b.summary);
                p.router.emit(Event::Bake {
                    deploy_id: d.id,
                    verdict: "breach",
                    detail: b.summary.clone(),
                    breach: Some(b.clone()),
                    view: Some(view(
                        Some(&now.since(&start)),
                        d,
                        cfg,
                        ends_at_ms,
                        None,
                        &report,
                    )),
                });
                // The rollback comes first; the breach is written with the outcome.
                let kept = now_report(p, d, &start, cfg, &judge);
                touch(p, |r| {
                    r.breach = Some(b.clone());
                    r.report = kept;
                })
                .await;
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
                    // Another node's watchdog won the same rollback.
                    Err(_) if p.router.live() == d.from => rolled_back_elsewhere(p, d).await,
                    Err(e) => {
                        StepEnd::End(Outcome::Failed, format!("{reason}; rollback failed: {e}"))
                    }
                };
            }
        }
        if Instant::now() >= end {
            let total = p.router.live_window(d.target).since(&start);
            let needed = cfg.thresholds.min_requests.max(1);
            // The last readings of every metric before a verdict.
            if !judge.is_empty() {
                let (app, external) = judge.look(p);
                let mut last = app;
                let pending = fetch.take().or_else(|| external.map(tokio::spawn));
                if let Some(f) = pending {
                    last.extend(f.await.unwrap_or_default());
                }
                if let Some(r) = judge.record(last) {
                    return analysis_breach(
                        p,
                        d,
                        &r,
                        &judge,
                        &now_report(p, d, &start, cfg, &judge),
                    )
                    .await;
                }
            }
            let table = now_report(p, d, &start, cfg, &judge);
            let kept = table.clone();
            touch(p, |r| r.report = kept).await;
            let unjudged = judge.unjudged();
            if total.requests >= needed && unjudged.is_empty() {
                log(p, format!("bake report:\n{}", analysis::table(&table))).await;
                return StepEnd::Done(Some(format!(
                    "passed{}: {}",
                    windows.caveat(),
                    describe(&total)
                )));
            }
            if total.requests >= needed {
                // Enough traffic, but a metric the user asked for could not
                // be read: that vouches for nothing.
                let what = format!("bake: {}", unjudged.join("; "));
                log(p, format!("bake report:\n{}", analysis::table(&table))).await;
                return match super::evidence::inconclusive(p, handle, d, Step::Bake, &what).await {
                    super::evidence::Decided::Accepted(text) => {
                        StepEnd::Done(Some(format!("{text}: {}", describe(&total))))
                    }
                    super::evidence::Decided::Refused(outcome, reason) => {
                        match p.switch_back(d, SwitchKind::Rollback, &reason).await {
                            Ok(_) => StepEnd::End(
                                outcome,
                                format!("{reason}; traffic is back on {}", d.from),
                            ),
                            Err(e) => StepEnd::End(
                                outcome,
                                format!("{reason}; switching back failed: {e}"),
                            ),
                        }
                    }
                };
            }
            if !extended {
                extended = true;
                let more = (started + 2 * cfg.duration.as_millis() as u64).saturating_sub(now_ms());
                end = Instant::now() + Duration::from_millis(more);
                let text = format!(
                    "waiting for evidence: {} of the {needed} requests needed reached {}; up to {:.0} s more",
                    total.requests,
                    d.target,
                    more as f64 / 1000.0
                );
                p.router.emit(Event::Bake {
                    deploy_id: d.id,
                    verdict: "waiting",
                    detail: text.clone(),
                    breach: None,
                    view: Some(view(Some(&total), d, cfg, now_ms() + more, None, &report)),
                });
                note(p, Step::Bake, text).await;
                continue;
            }
            let what = format!(
                "bake: {} of the {needed} requests needed reached {} in {:.0} s",
                total.requests,
                d.target,
                (now_ms().saturating_sub(started)) as f64 / 1000.0
            );
            return match super::evidence::inconclusive(p, handle, d, Step::Bake, &what).await {
                super::evidence::Decided::Accepted(text) => {
                    StepEnd::Done(Some(format!("{text}: {}", describe(&total))))
                }
                super::evidence::Decided::Refused(outcome, reason) => {
                    match p.switch_back(d, SwitchKind::Rollback, &reason).await {
                        Ok(_) => StepEnd::End(
                            outcome,
                            format!("{reason}; traffic is back on {}", d.from),
                        ),
                        Err(e) => {
                            StepEnd::End(outcome, format!("{reason}; switching back failed: {e}"))
                        }
                    }
                }
            };
        }
    }
}

/// The whole table now: the bake's traffic so far, then every other metric.
fn now_report(
    p: &Arc<Pipeline>,
    d: &DeployRecord,
    start: &Window,
    cfg: &bluegreen_core::config::deploy::BakeConfig,
    judge: &Judge,
) -> Vec<Reading> {
    let total = p.router.live_window(d.target).since(start);
    let mut rows = bluegreen_core::bake::rows(
        &total,
        d.baseline.as_ref(),
        &cfg.thresholds,
        d.baseline_dispersion.unwrap_or(1.0),
    );
    rows.extend(judge.rows());
    rows
}

/// A metric beyond the router's counters breached: roll back, naming it.
pub(super) async fn analysis_breach(
    p: &Arc<Pipeline>,
    d: &DeployRecord,
    r: &Reading,
    judge: &Judge,
    table: &[Reading],
) -> StepEnd {
    let sentence = r.sentence();
    let reason = format!("bake: {sentence}");
    let b = bluegreen_core::bake::Breach {
        metric: r.name.clone(),
        // Never NaN: the record is JSON, which has none.
        observed: r.new.unwrap_or(0.0),
        limit: judge.limit_of(&r.name, r.baseline),
        baseline: r.baseline,
        requests: p.router.live_window(d.target).requests,
        summary: sentence.clone(),
    };
    p.router.emit(Event::Bake {
        deploy_id: d.id,
        verdict: "breach",
        detail: sentence,
        breach: Some(b.clone()),
        view: None,
    });
    let kept = table.to_vec();
    touch(p, |rec| {
        rec.breach = Some(b.clone());
        rec.report = kept;
    })
    .await;
    log(p, format!("bake report:\n{}", analysis::table(table))).await;
    match p.switch_back(d, SwitchKind::Rollback, &reason).await {
        Ok(_) => StepEnd::End(
            Outcome::RolledBack,
            format!("{reason}; traffic is back on {}", d.from),
        ),
        Err(e) => StepEnd::End(Outcome::Failed, format!("{reason}; rollback failed: {e}")),
    }
}

/// The live side is not the deploy's any more, and not by this bake: the
/// deploy ends rolled back, saying which node switched back and why (the
/// watchdog's record; else the state's last switch record).
async fn rolled_back_elsewhere(p: &Arc<Pipeline>, d: &DeployRecord) -> StepEnd {
    let live = p.router.live();
    let found = p
        .cluster
        .as_ref()
        .and_then(|c| crate::watchdog::record_of(c, d.id));
    let reason = match found {
        Some(w) => {
            let text = format!(
                "node {} rolled back to {live}: {} on its own traffic ({} = {:.4}, limit {:.4}), while the deploy lock's holder ({}) was gone",
                w.node, w.breach.summary, w.breach.metric, w.breach.observed, w.breach.limit, w.holder
            );
            touch(p, |r| {
                r.breach = Some(w.breach.clone());
                r.rolled_back_by = Some(w.node.clone());
            })
            .await;
            log(p, text.clone()).await;
            format!("bake: {text}")
        }
        None => {
            let last = p.router.history().await.pop();
            // A watchdog whose record was not written still named itself
            // in the switch record.
            let node = last.as_ref().and_then(|s| {
                s.actor
                    .strip_prefix("watchdog on node ")
                    .map(str::to_string)
            });
            if node.is_some() {
                touch(p, |r| r.rolled_back_by = node).await;
            }
            let by = last
                .map(|s| format!(" by {}: {}", s.actor, s.reason))
                .unwrap_or_default();
            let text = format!(
                "{live} was made live again{by}; {} is not judged further",
                d.target
            );
            log(p, text.clone()).await;
            format!("bake: {text}")
        }
    };
    StepEnd::End(Outcome::RolledBack, reason)
}
