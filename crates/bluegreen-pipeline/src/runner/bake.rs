//! Step 8: the bake: watch the new side and roll back on a breach.

use super::analysis::{Judge, Scope};
use super::*;
use bluegreen_core::analysis::{self, Reading};
use bluegreen_core::config::deploy::BakeConfig;

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
    cfg: &BakeConfig,
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

/// The bake between ticks: where it began, the windows judged so far, the
/// other metrics' judge, and when it ends.
struct Bake<'a> {
    p: &'a Arc<Pipeline>,
    handle: &'a RunHandle,
    d: &'a DeployRecord,
    cfg: &'a BakeConfig,
    /// The target's traffic when the bake began (kept in the record).
    start: Window,
    windows: BakeWindows,
    dispersion: f64,
    judge: Judge,
    /// External readings on their way.
    fetch: Option<tokio::task::JoinHandle<Vec<(usize, Reading)>>>,
    /// The last closed window's table.
    report: Vec<Reading>,
    /// When the current window opened.
    opened: Instant,
    /// When the bake step began, Unix ms (a resumed bake keeps it).
    started: u64,
    end: Instant,
    ends_at_ms: u64,
    /// Too little traffic by the end: it waits as long again, once.
    extended: bool,
}

/// Step 8: watch the new side. Every 100 ms the current window is judged
/// (`core::bake::BakeWindows`): an error-rate breach rolls back at once; a
/// latency breach only once it held `consecutive` whole windows; a window
/// too small for its p99 keeps growing instead of closing. Notes describe
/// the window judged, not running totals.
pub(super) async fn bake(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let config = p.config();
    let mut bake = Bake::begin(p, handle, d, &config.bake).await;
    let mut tick = tokio::time::interval(Duration::from_millis(100).min(bake.cfg.interval));
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
        if let Some(end) = bake.tick(&mut tick).await {
            return end;
        }
    }
}

impl<'a> Bake<'a> {
    async fn begin(
        p: &'a Arc<Pipeline>,
        handle: &'a RunHandle,
        d: &'a DeployRecord,
        cfg: &'a BakeConfig,
    ) -> Bake<'a> {
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
        // Resumed (a crash, or a new process after `bluegreen upgrade`): the
        // bake ends at its original time, by the wall clock.
        let started = d
            .steps
            .iter()
            .find(|s| s.step == Step::Bake)
            .and_then(|s| s.started_at_ms)
            .unwrap_or_else(now_ms);
        let left = (started + cfg.duration.as_millis() as u64).saturating_sub(now_ms());
        let ends_at_ms = now_ms() + left;
        // The app's resources and the user's metrics, against the old side
        // while it was live (from the deploy's start to the switch).
        let switched_ms = d.step(Step::Switch).started_at_ms;
        let judge = Judge::new(
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
        let bake = Bake {
            p,
            handle,
            d,
            cfg,
            windows: BakeWindows::new(start.clone(), cfg.consecutive).with_dispersion(dispersion),
            start,
            dispersion,
            judge,
            fetch: None,
            report: Vec::new(),
            opened: Instant::now(),
            started,
            end: Instant::now() + Duration::from_millis(left),
            ends_at_ms,
            extended: false,
        };
        bake.emit(
            "waiting",
            format!("baking {} for {:.0} s more", d.target, left as f64 / 1000.0),
            None,
            None,
            None,
        );
        bake
    }

    /// One tick: judges the window so far, closes it when its time came,
    /// and decides at the end. `Some` when the bake ended.
    async fn tick(&mut self, tick: &mut tokio::time::Interval) -> Option<StepEnd> {
        let (p, d) = (self.p, self.d);
        tokio::select! {
            _ = tick.tick() => {}
            done = async { self.fetch.as_mut().expect("guarded").await }, if self.fetch.is_some() => {
                self.fetch = None;
                if let Some(r) = self.judge.record(done.unwrap_or_default()) {
                    return Some(self.analysis_breach(&r).await);
                }
            }
            _ = self.handle.abort.cancelled() => {
                return Some(back(p, d, Outcome::Aborted, aborted(self.handle)).await);
            }
        }
        let closing = self.opened.elapsed() >= self.cfg.interval;
        let took = self.opened.elapsed();
        let now = p.router.live_window(d.target);
        if closing && !self.judge.is_empty() {
            let (app, external) = self.judge.look(p);
            if let Some(r) = self.judge.record(app) {
                return Some(self.analysis_breach(&r).await);
            }
            if self.fetch.is_none() {
                self.fetch = external.map(tokio::spawn);
            }
        }
        let cfg = self.cfg;
        match self
            .windows
            .observe(&now, d.baseline.as_ref(), &cfg.thresholds, closing)
        {
            WindowEnd::Open => {}
            WindowEnd::Closed {
                number,
                window,
                verdict,
                detail,
            } => self.closed(number, took, &window, verdict, detail).await,
            WindowEnd::Breach(b) => return Some(self.breach(&now, b).await),
        }
        if Instant::now() >= self.end {
            return self.at_end().await;
        }
        None
    }

    /// A window closed without a breach: its table, its note, its event.
    async fn closed(
        &mut self,
        number: u32,
        took: Duration,
        window: &Window,
        verdict: Verdict,
        detail: Option<String>,
    ) {
        let (p, d, cfg) = (self.p, self.d, self.cfg);
        self.opened = Instant::now();
        self.report = bluegreen_core::bake::rows(
            window,
            d.baseline.as_ref(),
            &cfg.thresholds,
            self.dispersion,
        );
        self.report.extend(self.judge.rows());
        let kept = self.report.clone();
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
                describe(window),
                detail.map(|x| format!("; {x}")).unwrap_or_default()
            ),
        };
        self.emit(word, text.clone(), None, Some(window), Some(number as u64));
        note(p, Step::Bake, text).await;
    }

    /// The router's counters breached: roll back at once.
    async fn breach(&mut self, now: &Window, b: bluegreen_core::bake::Breach) -> StepEnd {
        let (p, d) = (self.p, self.d);
        let reason = format!("bake: {}", b.summary);
        self.emit(
            "breach",
            b.summary.clone(),
            Some(b.clone()),
            Some(&now.since(&self.start)),
            None,
        );
        // The rollback comes first; the breach is written with the outcome.
        let kept = self.table();
        touch(p, |r| {
            r.breach = Some(b.clone());
            r.report = kept;
        })
        .await;
        let t = Instant::now();
        match p.switch_back(d, SwitchKind::Rollback, &reason).await {
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
            Err(e) => StepEnd::End(Outcome::Failed, format!("{reason}; rollback failed: {e}")),
        }
    }

    /// The bake's time is up: a pass only with enough traffic and every
    /// metric read; too little waits as long again once, then is
    /// inconclusive. `None`: it goes on (extended).
    async fn at_end(&mut self) -> Option<StepEnd> {
        let (p, d, cfg) = (self.p, self.d, self.cfg);
        let total = p.router.live_window(d.target).since(&self.start);
        let needed = cfg.thresholds.min_requests.max(1);
        // The last readings of every metric before a verdict.
        if !self.judge.is_empty() {
            let (app, external) = self.judge.look(p);
            let mut last = app;
            let pending = self.fetch.take().or_else(|| external.map(tokio::spawn));
            if let Some(f) = pending {
                last.extend(f.await.unwrap_or_default());
            }
            if let Some(r) = self.judge.record(last) {
                return Some(self.analysis_breach(&r).await);
            }
        }
        let table = self.table();
        let kept = table.clone();
        touch(p, |r| r.report = kept).await;
        let unjudged = self.judge.unjudged();
        if total.requests >= needed {
            log(p, format!("bake report:\n{}", analysis::table(&table))).await;
            if unjudged.is_empty() {
                return Some(StepEnd::Done(Some(format!(
                    "passed{}: {}",
                    self.windows.caveat(),
                    describe(&total)
                ))));
            }
            // Enough traffic, but a metric the user asked for could not
            // be read: that vouches for nothing.
            let what = format!("bake: {}", unjudged.join("; "));
            return Some(self.inconclusive(&what, &total).await);
        }
        if !self.extended {
            self.extended = true;
            let more =
                (self.started + 2 * cfg.duration.as_millis() as u64).saturating_sub(now_ms());
            self.end = Instant::now() + Duration::from_millis(more);
            self.ends_at_ms = now_ms() + more;
            let text = format!(
                "waiting for evidence: {} of the {needed} requests needed reached {}; up to {:.0} s more",
                total.requests,
                d.target,
                more as f64 / 1000.0
            );
            self.emit("waiting", text.clone(), None, Some(&total), None);
            note(p, Step::Bake, text).await;
            return None;
        }
        let what = format!(
            "bake: {} of the {needed} requests needed reached {} in {:.0} s",
            total.requests,
            d.target,
            (now_ms().saturating_sub(self.started)) as f64 / 1000.0
        );
        Some(self.inconclusive(&what, &total).await)
    }

    /// Too little to judge: what `deploy.bake.on_inconclusive` says.
    async fn inconclusive(&self, what: &str, total: &Window) -> StepEnd {
        let (p, d) = (self.p, self.d);
        match super::evidence::inconclusive(p, self.handle, d, Step::Bake, what).await {
            super::evidence::Decided::Accepted(text) => {
                StepEnd::Done(Some(format!("{text}: {}", describe(total))))
            }
            super::evidence::Decided::Refused(outcome, reason) => back(p, d, outcome, reason).await,
        }
    }

    async fn analysis_breach(&self, r: &Reading) -> StepEnd {
        analysis_breach(self.p, self.d, r, &self.judge, &self.table()).await
    }

    /// The whole table now: the bake's traffic so far, then every other metric.
    fn table(&self) -> Vec<Reading> {
        now_report(self.p, self.d, &self.start, self.cfg, &self.judge)
    }

    /// A `bake` event with the release view.
    fn emit(
        &self,
        verdict: &'static str,
        detail: String,
        breach: Option<bluegreen_core::bake::Breach>,
        window: Option<&Window>,
        number: Option<u64>,
    ) {
        self.p.router.emit(Event::Bake {
            deploy_id: self.d.id,
            verdict,
            detail,
            breach,
            view: Some(view(
                window,
                self.d,
                self.cfg,
                self.ends_at_ms,
                number,
                &self.report,
            )),
        });
    }
}

/// Traffic goes back to the old side and the deploy ends with `outcome`.
async fn back(p: &Arc<Pipeline>, d: &DeployRecord, outcome: Outcome, reason: String) -> StepEnd {
    match p.switch_back(d, SwitchKind::Rollback, &reason).await {
        Ok(_) => StepEnd::End(outcome, format!("{reason}; traffic is back on {}", d.from)),
        Err(e) => StepEnd::End(outcome, format!("{reason}; switching back failed: {e}")),
    }
}

/// The whole table now: the bake's traffic so far, then every other metric.
fn now_report(
    p: &Arc<Pipeline>,
    d: &DeployRecord,
    start: &Window,
    cfg: &BakeConfig,
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

#[cfg(test)]
mod tests {
    //! The bake in process, against a router that only counts
    //! (`runner::fake`): green is live (the switch happened), blue is the
    //! old side, traffic is scripted, every switch asked for is kept.

    use super::super::fake::{setup, Extra, Setup, Traffic, FAILING, GOOD, SILENT};
    use super::*;
    use bluegreen_core::deploy::DeployOptions;
    use bluegreen_core::state::SwitchRecord;

    /// A bake of 600 ms (windows of 200 ms, 20 requests needed).
    async fn baking(live: Side, green: Traffic, options: DeployOptions) -> Setup {
        let extra = Extra {
            bake: "duration = \"600ms\"",
            ..Default::default()
        };
        setup(live, GOOD, green, extra, options).await
    }

    fn record(s: &Setup) -> DeployRecord {
        s.p.book.try_lock().unwrap().current.clone().unwrap()
    }

    fn said(s: &Setup, verdict: &str) -> Vec<String> {
        let events = s.fake.bake_events.lock().unwrap();
        events
            .iter()
            .filter(|(v, _)| v == verdict)
            .map(|(_, d)| d.clone())
            .collect()
    }

    #[tokio::test]
    async fn a_good_bake_passes_at_its_end_and_switches_nothing() {
        let s = baking(Side::Green, GOOD, DeployOptions::default()).await;
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::Done(Some(text)) => assert!(text.starts_with("passed: "), "{text}"),
            other => panic!("a good bake did not pass: {other:?}"),
        }
        assert!(s.fake.switched_to().is_empty(), "nothing switched");
        let r = record(&s);
        assert!(
            r.bake_start.is_some(),
            "the start is kept for a node that takes over"
        );
        assert!(r.breach.is_none());
        assert!(
            !said(&s, "ok").is_empty(),
            "whole windows were judged and said so"
        );
    }

    #[tokio::test]
    async fn an_error_breach_rolls_back_to_the_old_side_at_once() {
        let s = baking(Side::Green, FAILING, DeployOptions::default()).await;
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::RolledBack, why) => {
                assert!(why.starts_with("bake: "), "{why}");
                assert!(why.contains("error rate"), "{why}");
            }
            other => panic!("a failing side was not rolled back: {other:?}"),
        }
        let switches = s.fake.switches.lock().unwrap().clone();
        assert_eq!(switches.len(), 1, "{switches:?}");
        assert_eq!(switches[0].to, Side::Blue);
        assert_eq!(switches[0].kind, SwitchKind::Rollback);
        assert_eq!(switches[0].actor, "deploy #1");
        let r = record(&s);
        let breach = r.breach.expect("the breach is in the record");
        assert!(breach.observed > breach.limit, "{breach:?}");
        assert_eq!(said(&s, "breach").len(), 1);
    }

    #[tokio::test]
    async fn a_bake_that_sees_no_traffic_waits_once_more_then_fails_back() {
        let s = baking(Side::Green, SILENT, DeployOptions::default()).await;
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::Failed, why) => {
                assert!(
                    why.contains("0 of the 20 requests needed reached green"),
                    "{why}"
                );
                assert!(why.contains("never a pass"), "{why}");
                assert!(why.ends_with("traffic is back on blue"), "{why}");
            }
            other => panic!("a bake without evidence passed: {other:?}"),
        }
        assert_eq!(s.fake.switched_to(), [Side::Blue]);
        let waited = said(&s, "waiting");
        assert!(
            waited
                .iter()
                .any(|w| w.starts_with("waiting for evidence: 0 of the 20")),
            "it waited as long again first: {waited:?}"
        );
    }

    /// The story behind the rule: a bake resumed by another node passed with
    /// 0 requests judged and stopped the good side. Resumed after its time
    /// is up, with all of green's traffic from before its start, it judges
    /// what came since (nothing) and never passes.
    #[tokio::test]
    async fn a_resumed_bake_judges_only_what_came_since_its_start() {
        let before = Traffic {
            before: 5_000,
            ..SILENT
        };
        let mut s = baking(Side::Green, before, DeployOptions::default()).await;
        s.d.bake_start = Some(s.fake.window(Side::Green));
        let step = s.d.steps.iter_mut().find(|x| x.step == Step::Bake).unwrap();
        step.started_at_ms = Some(now_ms() - 5_000);
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::Failed, why) => {
                assert!(why.contains("0 of the 20 requests needed"), "{why}");
                assert!(why.ends_with("traffic is back on blue"), "{why}");
            }
            other => panic!("a resumed bake passed on another's traffic: {other:?}"),
        }
        assert_eq!(s.fake.switched_to(), [Side::Blue]);
    }

    #[tokio::test]
    async fn too_little_traffic_passes_only_when_the_operator_said_so_and_the_record_says_it() {
        let options = DeployOptions {
            accept_inconclusive: true,
            ..Default::default()
        };
        let s = baking(Side::Green, SILENT, options).await;
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::Done(Some(text)) => {
                assert!(
                    text.contains("passed as inconclusive (--accept-inconclusive)"),
                    "{text}"
                );
                assert!(text.ends_with(": 0 requests"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(s.fake.switched_to().is_empty());
    }

    /// The first release has nothing to go back to: too little traffic
    /// passes, and says why.
    #[tokio::test]
    async fn the_first_release_passes_without_traffic_saying_there_is_nothing_to_go_back_to() {
        let mut s = baking(Side::Green, SILENT, DeployOptions::default()).await;
        s.d.previous_version = None;
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::Done(Some(text)) => assert!(
                text.contains("passed as inconclusive (the first release: nothing to go back to)"),
                "{text}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(s.fake.switched_to().is_empty());
    }

    /// Another node's watchdog rolled back while this deploy's holder was
    /// away: the bake ends rolled back, naming who, and switches nothing.
    #[tokio::test]
    async fn a_bake_that_finds_the_old_side_live_ends_rolled_back_naming_who() {
        let s = baking(Side::Blue, GOOD, DeployOptions::default()).await;
        s.fake.history.lock().unwrap().push(SwitchRecord {
            generation: 3,
            at: String::new(),
            at_unix_ms: now_ms(),
            from: Side::Green,
            to: Side::Blue,
            kind: SwitchKind::Rollback,
            forced: true,
            actor: "watchdog on node b".into(),
            reason: "error rate 40%".into(),
        });
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::RolledBack, why) => assert_eq!(
                why,
                "bake: blue was made live again by watchdog on node b: error rate 40%; green is not judged further"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(record(&s).rolled_back_by.as_deref(), Some("b"));
        assert!(s.fake.switched_to().is_empty(), "nothing switched again");
    }

    #[tokio::test]
    async fn an_abort_switches_back_and_says_why() {
        let s = baking(Side::Green, GOOD, DeployOptions::default()).await;
        *s.handle.abort_reason.lock().unwrap() = Some("by alice".into());
        s.handle.abort.cancel();
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::Aborted, why) => {
                assert_eq!(why, "aborted: by alice; traffic is back on blue")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.fake.switched_to(), [Side::Blue]);
    }

    #[tokio::test]
    async fn a_rollback_that_cannot_be_made_fails_the_deploy_and_says_why() {
        let s = baking(Side::Green, FAILING, DeployOptions::default()).await;
        *s.fake.switch_fails.lock().unwrap() = Some("etcd is unreachable".into());
        let end = bake(&s.p, &s.handle, &s.d).await;
        match &end {
            StepEnd::End(Outcome::Failed, why) => {
                assert!(why.contains("rollback failed"), "{why}");
                assert!(why.contains("etcd is unreachable"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}
