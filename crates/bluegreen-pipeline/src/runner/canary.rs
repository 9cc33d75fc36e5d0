//! Step 7 with `--canary`: before the switch, the new side takes each
//! share of the clients in turn (a weighted split, sticky per client), for
//! `--step` each, judged by the bake's rules against the old side's
//! traffic **of the same minutes** (a side-by-side comparison, not
//! before/after). A breach sends everyone back to the old side at once and
//! ends the deploy as rolled back; after the last share comes the switch.

use super::analysis::{Judge, Scope};
use super::bake::describe;
use super::checks::wait_healthy;
use super::*;
use bluegreen_core::analysis::Reading;

pub(super) async fn canary(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    // A record from before canaries existed resumes with none to run.
    if d.options.canary.is_empty() {
        return StepEnd::Skipped("no --canary: a direct switch".into());
    }
    if let end @ StepEnd::End(..) = wait_healthy(p, handle, d.target, Step::Canary).await {
        return end;
    }
    let config = p.config();
    let cfg = &config.bake;
    let step = Duration::from_millis(d.options.canary_step_ms.max(500));
    let mut done = Vec::new();
    for &bp in &d.options.canary {
        let share = bp as f64 / 100.0;
        if let Err(e) = p.router.set_weight(d.target, bp, false).await {
            let _ = p.router.set_weight(d.target, 0, true).await;
            return StepEnd::End(Outcome::Failed, format!("canary at {share}%: {e}"));
        }
        note(
            p,
            Step::Canary,
            format!("{share}% of clients on {}", d.target),
        )
        .await;
        let new_start = p.router.live_window(d.target);
        let old_start = p.router.live_window(d.from);
        let mut windows = BakeWindows::new(new_start.clone(), cfg.consecutive);
        // The app's resources and the user's metrics, both sides in the
        // same minutes.
        let share_start = now_ms();
        let mut judge = Judge::new(
            p,
            Scope {
                new: (d.target, d.version.clone()),
                base: d.previous_version.clone().map(|v| (d.from, v)),
                new_from_ms: share_start,
                base_from_ms: share_start,
                base_to_ms: None,
            },
        );
        let mut fetch: Option<tokio::task::JoinHandle<Vec<(usize, Reading)>>> = None;
        let mut warned_one_address = false;
        let mut opened = Instant::now();
        let mut end = Instant::now() + step;
        // Too little traffic on the new side by the end: as long again.
        let mut extended = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100).min(cfg.interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut breached: Option<Reading> = None;
            tokio::select! {
                _ = tick.tick() => {}
                done = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => {
                    fetch = None;
                    breached = judge.record(done.unwrap_or_default());
                }
                _ = handle.abort.cancelled() => {
                    let _ = p.router.set_weight(d.target, 0, true).await;
                    return StepEnd::End(Outcome::Aborted, format!("{}; every client is back on {}", aborted(handle), d.from));
                }
            }
            let closing = opened.elapsed() >= cfg.interval;
            // Said as soon as it shows, not only at the share's end: the
            // old side is busy and the new one hears nothing.
            if closing && !warned_one_address {
                let got = p.router.live_window(d.target).since(&new_start).requests;
                let old = p.router.live_window(d.from).since(&old_start).requests;
                if got == 0 && old >= cfg.thresholds.min_requests.max(1) {
                    warned_one_address = true;
                    note(p, Step::Canary, format!(
                        "{share}%: none of the old side's {old} requests went to {}: every client may hash from one address; set proxy.sticky_header, or proxy.trusted_proxies for the load balancer in front",
                        d.target
                    )).await;
                }
            }
            if closing && !judge.is_empty() {
                let (app, external) = judge.look(p);
                breached = breached.or(judge.record(app));
                if fetch.is_none() {
                    fetch = external.map(tokio::spawn);
                }
            }
            if let Some(r) = breached {
                return share_back(p, d, share, &r, judge.rows()).await;
            }
            // The old side's traffic of the same minutes is the yardstick.
            let same_minutes = p.router.live_window(d.from).since(&old_start);
            let now = p.router.live_window(d.target);
            match windows.observe(&now, Some(&same_minutes), &cfg.thresholds, closing) {
                WindowEnd::Open => {}
                WindowEnd::Closed { .. } => opened = Instant::now(),
                WindowEnd::Breach(b) => {
                    // Everyone back first; the breach is written with the outcome.
                    let back = p.router.set_weight(d.target, 0, true).await;
                    let reason = format!("canary at {share}%: {}", b.summary);
                    p.router.events.emit(Event::Bake {
                        deploy_id: d.id,
                        verdict: "breach",
                        detail: reason.clone(),
                        breach: Some(b.clone()),
                        view: None,
                    });
                    touch(p, |r| r.breach = Some(b.clone())).await;
                    return match back {
                        Ok(_) => StepEnd::End(
                            Outcome::RolledBack,
                            format!("{reason}; every client is back on {}", d.from),
                        ),
                        Err(e) => StepEnd::End(
                            Outcome::Failed,
                            format!("{reason}; taking the share back failed: {e}"),
                        ),
                    };
                }
            }
            if Instant::now() >= end {
                let got = p.router.live_window(d.target).since(&new_start).requests;
                if got >= cfg.thresholds.min_requests.max(1) || extended {
                    break;
                }
                extended = true;
                end = Instant::now() + step;
                note(
                    p,
                    Step::Canary,
                    format!(
                        "{share}%: waiting for evidence: {got} of the {} requests needed reached {}",
                        cfg.thresholds.min_requests.max(1),
                        d.target
                    ),
                )
                .await;
            }
        }
        let total = p.router.live_window(d.target).since(&new_start);
        let old = p.router.live_window(d.from).since(&old_start);
        let needed = cfg.thresholds.min_requests.max(1);
        if !judge.is_empty() {
            let (app, external) = judge.look(p);
            let mut last = app;
            if let Some(f) = fetch.take().or_else(|| external.map(tokio::spawn)) {
                last.extend(f.await.unwrap_or_default());
            }
            if let Some(r) = judge.record(last) {
                return share_back(p, d, share, &r, judge.rows()).await;
            }
            let mut rows = bluegreen_core::bake::rows(&total, Some(&old), &cfg.thresholds, 1.0);
            rows.extend(judge.rows());
            touch(p, |r| r.report = rows).await;
            let unjudged = judge.unjudged();
            if !unjudged.is_empty() && total.requests >= needed {
                let what = format!("canary at {share}%: {}", unjudged.join("; "));
                match super::evidence::inconclusive(p, handle, d, Step::Canary, &what).await {
                    super::evidence::Decided::Accepted(text) => {
                        done.push(text);
                        continue;
                    }
                    super::evidence::Decided::Refused(outcome, reason) => {
                        let back = p.router.set_weight(d.target, 0, true).await;
                        return match back {
                            Ok(_) => StepEnd::End(
                                outcome,
                                format!("{reason}; every client is back on {}", d.from),
                            ),
                            Err(e) => StepEnd::End(
                                outcome,
                                format!("{reason}; taking the share back failed: {e}"),
                            ),
                        };
                    }
                }
            }
        }
        if total.requests < needed {
            // Every client hashed to the old side: usually all of them come
            // from one address (a load balancer not trusted, no sticky header).
            let hint = if total.requests == 0 && old.requests >= needed {
                format!(
                    " (none of the old side's {} requests went to {}: every client may hash from one address; set proxy.sticky_header, or proxy.trusted_proxies for the load balancer in front)",
                    old.requests, d.target
                )
            } else {
                String::new()
            };
            let what = format!(
                "canary at {share}%: {} of the {needed} requests needed reached {}{hint}",
                total.requests, d.target
            );
            match super::evidence::inconclusive(p, handle, d, Step::Canary, &what).await {
                super::evidence::Decided::Accepted(text) => {
                    done.push(text);
                    continue;
                }
                super::evidence::Decided::Refused(outcome, reason) => {
                    let back = p.router.set_weight(d.target, 0, true).await;
                    return match back {
                        Ok(_) => StepEnd::End(
                            outcome,
                            format!("{reason}; every client is back on {}", d.from),
                        ),
                        Err(e) => StepEnd::End(
                            outcome,
                            format!("{reason}; taking the share back failed: {e}"),
                        ),
                    };
                }
            }
        }
        done.push(format!(
            "{share}%{}: {} (old side {})",
            windows.caveat(),
            describe(&total),
            describe(&old)
        ));
    }
    StepEnd::Done(Some(done.join("; ")))
}

/// A metric beyond the router's counters breached during a share: every
/// client back on the old side, naming the metric.
async fn share_back(
    p: &Arc<Pipeline>,
    d: &DeployRecord,
    share: f64,
    r: &Reading,
    rows: Vec<Reading>,
) -> StepEnd {
    let back = p.router.set_weight(d.target, 0, true).await;
    let reason = format!("canary at {share}%: {}", r.sentence());
    p.router.events.emit(Event::Bake {
        deploy_id: d.id,
        verdict: "breach",
        detail: reason.clone(),
        breach: None,
        view: None,
    });
    touch(p, |rec| rec.report = rows).await;
    match back {
        Ok(_) => StepEnd::End(
            Outcome::RolledBack,
            format!("{reason}; every client is back on {}", d.from),
        ),
        Err(e) => StepEnd::End(
            Outcome::Failed,
            format!("{reason}; taking the share back failed: {e}"),
        ),
    }
}
