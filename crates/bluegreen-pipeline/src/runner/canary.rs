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
use bluegreen_core::config::deploy::BakeConfig;

pub(super) async fn canary(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    // A record from before canaries existed resumes with none to run.
    if d.options.canary.is_empty() {
        return StepEnd::Skipped("no --canary: a direct switch".into());
    }
    if let end @ StepEnd::End(..) = wait_healthy(p, handle, d.target, Step::Canary).await {
        return end;
    }
    let config = p.config();
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
        let mut s = Share::new(p, handle, d, &config.bake, share);
        if let Err(end) = s.watch(step).await {
            return end;
        }
        match s.verdict().await {
            Ok(text) => done.push(text),
            Err(end) => return end,
        }
    }
    StepEnd::Done(Some(done.join("; ")))
}

/// One share while it runs: both sides' traffic since it began, its
/// windows, and the other metrics' judge.
struct Share<'a> {
    p: &'a Arc<Pipeline>,
    handle: &'a RunHandle,
    d: &'a DeployRecord,
    cfg: &'a BakeConfig,
    /// The share in percent, for people.
    share: f64,
    new_start: Window,
    old_start: Window,
    windows: BakeWindows,
    judge: Judge,
    /// External readings on their way.
    fetch: Option<tokio::task::JoinHandle<Vec<(usize, Reading)>>>,
}

impl<'a> Share<'a> {
    fn new(
        p: &'a Arc<Pipeline>,
        handle: &'a RunHandle,
        d: &'a DeployRecord,
        cfg: &'a BakeConfig,
        share: f64,
    ) -> Share<'a> {
        let new_start = p.router.live_window(d.target);
        let old_start = p.router.live_window(d.from);
        // The app's resources and the user's metrics, both sides in the
        // same minutes.
        let share_start = now_ms();
        let judge = Judge::new(
            p,
            Scope {
                new: (d.target, d.version.clone()),
                base: d.previous_version.clone().map(|v| (d.from, v)),
                new_from_ms: share_start,
                base_from_ms: share_start,
                base_to_ms: None,
            },
        );
        Share {
            p,
            handle,
            d,
            cfg,
            share,
            windows: BakeWindows::new(new_start.clone(), cfg.consecutive),
            new_start,
            old_start,
            judge,
            fetch: None,
        }
    }

    /// Judges the share every 100 ms for `step` (as long again when the
    /// new side had too little traffic); `Err` when the deploy ends here.
    async fn watch(&mut self, step: Duration) -> Result<(), StepEnd> {
        let (p, d, cfg, share) = (self.p, self.d, self.cfg, self.share);
        let mut warned_one_address = false;
        let mut opened = Instant::now();
        let mut end = Instant::now() + step;
        let mut extended = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100).min(cfg.interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut breached: Option<Reading> = None;
            tokio::select! {
                _ = tick.tick() => {}
                done = async { self.fetch.as_mut().expect("guarded").await }, if self.fetch.is_some() => {
                    self.fetch = None;
                    breached = self.judge.record(done.unwrap_or_default());
                }
                _ = self.handle.abort.cancelled() => {
                    let _ = p.router.set_weight(d.target, 0, true).await;
                    return Err(StepEnd::End(Outcome::Aborted, format!("{}; every client is back on {}", aborted(self.handle), d.from)));
                }
            }
            let closing = opened.elapsed() >= cfg.interval;
            // Said as soon as it shows, not only at the share's end: the
            // old side is busy and the new one hears nothing.
            if closing && !warned_one_address {
                let got = p
                    .router
                    .live_window(d.target)
                    .since(&self.new_start)
                    .requests;
                let old = p.router.live_window(d.from).since(&self.old_start).requests;
                if got == 0 && old >= cfg.thresholds.min_requests.max(1) {
                    warned_one_address = true;
                    note(p, Step::Canary, format!(
                        "{share}%: none of the old side's {old} requests went to {}: every client may hash from one address; set proxy.sticky_header, or proxy.trusted_proxies for the load balancer in front",
                        d.target
                    )).await;
                }
            }
            if closing && !self.judge.is_empty() {
                let (app, external) = self.judge.look(p);
                breached = breached.or(self.judge.record(app));
                if self.fetch.is_none() {
                    self.fetch = external.map(tokio::spawn);
                }
            }
            if let Some(r) = breached {
                return Err(share_back(p, d, share, &r, self.judge.rows()).await);
            }
            // The old side's traffic of the same minutes is the yardstick.
            let same_minutes = p.router.live_window(d.from).since(&self.old_start);
            let now = p.router.live_window(d.target);
            match self
                .windows
                .observe(&now, Some(&same_minutes), &cfg.thresholds, closing)
            {
                WindowEnd::Open => {}
                WindowEnd::Closed { .. } => opened = Instant::now(),
                WindowEnd::Breach(b) => {
                    let reason = format!("canary at {share}%: {}", b.summary);
                    // Everyone back first; the breach is written with the outcome.
                    let end =
                        everyone_back(p, d, Outcome::RolledBack, Outcome::Failed, reason.clone())
                            .await;
                    p.router.emit(Event::Bake {
                        deploy_id: d.id,
                        verdict: "breach",
                        detail: reason,
                        breach: Some(b.clone()),
                        view: None,
                    });
                    touch(p, |r| r.breach = Some(b)).await;
                    return Err(end);
                }
            }
            if Instant::now() >= end {
                let got = p
                    .router
                    .live_window(d.target)
                    .since(&self.new_start)
                    .requests;
                if got >= cfg.thresholds.min_requests.max(1) || extended {
                    return Ok(());
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
    }

    /// The share's end: the last readings, then a pass only with enough
    /// traffic and every metric read. `Ok`: the sentence for the record.
    async fn verdict(&mut self) -> Result<String, StepEnd> {
        let (p, d, cfg, share) = (self.p, self.d, self.cfg, self.share);
        let total = p.router.live_window(d.target).since(&self.new_start);
        let old = p.router.live_window(d.from).since(&self.old_start);
        let needed = cfg.thresholds.min_requests.max(1);
        if !self.judge.is_empty() {
            let (app, external) = self.judge.look(p);
            let mut last = app;
            if let Some(f) = self.fetch.take().or_else(|| external.map(tokio::spawn)) {
                last.extend(f.await.unwrap_or_default());
            }
            if let Some(r) = self.judge.record(last) {
                return Err(share_back(p, d, share, &r, self.judge.rows()).await);
            }
            let mut rows = bluegreen_core::bake::rows(&total, Some(&old), &cfg.thresholds, 1.0);
            rows.extend(self.judge.rows());
            touch(p, |r| r.report = rows).await;
            let unjudged = self.judge.unjudged();
            if !unjudged.is_empty() && total.requests >= needed {
                let what = format!("canary at {share}%: {}", unjudged.join("; "));
                return self.inconclusive(&what).await;
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
            return self.inconclusive(&what).await;
        }
        Ok(format!(
            "{share}%{}: {} (old side {})",
            self.windows.caveat(),
            describe(&total),
            describe(&old)
        ))
    }

    /// Too little to judge: what `deploy.bake.on_inconclusive` says.
    async fn inconclusive(&self, what: &str) -> Result<String, StepEnd> {
        let (p, d) = (self.p, self.d);
        match super::evidence::inconclusive(p, self.handle, d, Step::Canary, what).await {
            super::evidence::Decided::Accepted(text) => Ok(text),
            super::evidence::Decided::Refused(outcome, reason) => {
                Err(everyone_back(p, d, outcome, outcome, reason).await)
            }
        }
    }
}

/// Every client back on the old side; the deploy ends with `outcome`, or
/// `failed` when the share could not be taken back.
async fn everyone_back(
    p: &Arc<Pipeline>,
    d: &DeployRecord,
    outcome: Outcome,
    failed: Outcome,
    reason: String,
) -> StepEnd {
    match p.router.set_weight(d.target, 0, true).await {
        Ok(_) => StepEnd::End(
            outcome,
            format!("{reason}; every client is back on {}", d.from),
        ),
        Err(e) => StepEnd::End(
            failed,
            format!("{reason}; taking the share back failed: {e}"),
        ),
    }
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
    let reason = format!("canary at {share}%: {}", r.sentence());
    let end = everyone_back(p, d, Outcome::RolledBack, Outcome::Failed, reason.clone()).await;
    p.router.emit(Event::Bake {
        deploy_id: d.id,
        verdict: "breach",
        detail: reason,
        breach: None,
        view: None,
    });
    touch(p, |rec| rec.report = rows).await;
    end
}

#[cfg(test)]
mod tests {
    //! The canary step in process, against a router that only counts
    //! (`runner::fake`): each side's traffic is scripted, every weight asked
    //! for is kept.

    use super::super::fake::{setup, Extra, Traffic, FAILING, GOOD, SILENT};
    use super::*;
    use bluegreen_core::deploy::DeployOptions;

    /// Runs the canary step of a deploy of v2 to green (blue live, v1) with
    /// these shares, each side's traffic as given; what it ended with and
    /// every weight it asked for.
    async fn run(shares: &[u16], blue: Traffic, green: Traffic) -> (StepEnd, Vec<u16>) {
        let options = DeployOptions {
            canary: shares.to_vec(),
            canary_step_ms: 500,
            ..Default::default()
        };
        let s = setup(Side::Blue, blue, green, Extra::default(), options).await;
        let end = canary(&s.p, &s.handle, &s.d).await;
        let weights = s.fake.weights.lock().unwrap().clone();
        (end, weights)
    }

    #[tokio::test]
    async fn a_good_canary_takes_every_share_in_turn_and_passes() {
        let (end, weights) = run(&[1_000, 5_000], GOOD, GOOD).await;
        assert!(matches!(end, StepEnd::Done(_)), "{end:?}");
        assert_eq!(weights, [1_000, 5_000], "each share, in order, and no more");
    }

    #[tokio::test]
    async fn a_canary_that_fails_sends_everyone_back_at_once() {
        let (end, weights) = run(&[1_000, 5_000], GOOD, FAILING).await;
        match &end {
            StepEnd::End(Outcome::RolledBack, why) => {
                assert!(why.contains("canary at 10%"), "{why}");
                assert!(why.contains("back on blue"), "{why}");
            }
            other => panic!("not rolled back: {other:?}"),
        }
        assert_eq!(weights, [1_000, 0], "the 50% share was never given");
    }

    /// The story behind the rule: a canary whose new side got 0 requests
    /// once switched everyone. Too little traffic is never a pass.
    #[tokio::test]
    async fn a_canary_that_sees_no_traffic_never_passes() {
        let (end, weights) = run(&[1_000], GOOD, SILENT).await;
        match &end {
            StepEnd::End(outcome, why) => {
                assert_ne!(*outcome, Outcome::Succeeded);
                assert!(why.contains("0 of the 20 requests needed"), "{why}");
                assert!(
                    why.contains("every client may hash from one address"),
                    "{why}"
                );
            }
            other => panic!("a canary without evidence passed: {other:?}"),
        }
        assert_eq!(
            weights.last(),
            Some(&0),
            "everyone back on blue: {weights:?}"
        );
    }
}
