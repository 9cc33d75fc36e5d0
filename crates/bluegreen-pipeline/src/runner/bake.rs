//! Step 8: the bake: watch the new side and roll back on a breach.

use super::*;

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

/// Step 8: watch the new side. Every 100 ms the current window is judged
/// (`core::bake::BakeWindows`): an error-rate breach rolls back at once; a
/// latency breach only once it held `consecutive` whole windows; a window
/// too small for its p99 keeps growing instead of closing. Notes describe
/// the window judged, not running totals.
pub(super) async fn bake(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let cfg = &p.config().bake;
    let start = p.router.live_window(d.target);
    let mut windows = BakeWindows::new(start.clone(), cfg.consecutive);
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
    let end = Instant::now() + Duration::from_millis(left);
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
                p.router.events.emit(Event::Bake {
                    deploy_id: d.id,
                    verdict: word,
                    detail: text.clone(),
                    breach: None,
                });
                note(p, Step::Bake, text).await;
            }
            WindowEnd::Breach(b) => {
                let reason = format!("bake: {}", b.summary);
                p.router.events.emit(Event::Bake {
                    deploy_id: d.id,
                    verdict: "breach",
                    detail: b.summary.clone(),
                    breach: Some(b.clone()),
                });
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
