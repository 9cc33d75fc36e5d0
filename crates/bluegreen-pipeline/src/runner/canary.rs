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
                    p.router.emit(Event::Bake {
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
    p.router.emit(Event::Bake {
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

#[cfg(test)]
mod tests {
    //! The canary step in process, against a router that only counts: each
    //! side's live traffic is what the test says it is (requests a second,
    //! the share of them that fail), and every weight asked for is kept.

    use super::*;
    use crate::routing::{Fut, Routing};
    use bluegreen_core::config::Config;
    use bluegreen_core::deploy::DeployOptions;
    use bluegreen_core::latency::{bucket, Histogram};
    use bluegreen_core::state::{Split, SwitchRecord, SwitchRequest};
    use bluegreen_core::Sides;
    use bluegreen_router::shadow::{Shadow, ShadowOptions, ShadowShare};
    use bluegreen_router::{ControlError, SwitchError, SwitchOutcome};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    /// Traffic of one side: requests a second and the share that fail.
    #[derive(Clone, Copy)]
    struct Traffic {
        per_sec: f64,
        failing: f64,
    }

    struct Fake {
        config: Arc<Config>,
        started: Instant,
        traffic: Sides<Traffic>,
        weights: Mutex<Vec<u16>>,
    }

    impl Fake {
        fn window(&self, side: Side) -> Window {
            let t = self.traffic[side];
            let requests = (t.per_sec * self.started.elapsed().as_secs_f64()) as u64;
            let mut latency = Histogram::default();
            latency.counts[bucket(Duration::from_millis(10))] = requests;
            Window {
                requests,
                errors: (requests as f64 * t.failing) as u64,
                latency,
                ..Default::default()
            }
        }
    }

    impl Routing for Fake {
        fn config(&self) -> Arc<Config> {
            self.config.clone()
        }
        fn live(&self) -> Side {
            Side::Blue
        }
        fn live_window(&self, side: Side) -> Window {
            self.window(side)
        }
        fn local_window(&self, side: Side) -> Window {
            self.window(side)
        }
        fn side_health(&self, _: Side) -> (usize, usize, String) {
            (1, 1, String::new())
        }
        fn reset_health(&self, _: Side) {}
        fn ready(&self) -> bool {
            true
        }
        fn split(&self) -> Option<Split> {
            None
        }
        fn cluster(&self) -> Option<Arc<dyn bluegreen_store::Cluster>> {
            None
        }
        fn listener_addr(&self, _: &str) -> Option<SocketAddr> {
            None
        }
        fn pin(&self) -> Option<(Side, u64)> {
            None
        }
        fn shadow_shares(&self, _: u64) -> Vec<(String, ShadowShare)> {
            Vec::new()
        }
        fn emit(&self, _: Event) {}
        fn listening(&self) -> bool {
            false
        }
        fn set_weight(
            &self,
            side: Side,
            basis_points: u16,
            _forced: bool,
        ) -> Fut<'_, Result<Option<Split>, ControlError>> {
            self.weights.lock().unwrap().push(basis_points);
            Box::pin(async move { Ok((basis_points > 0).then_some(Split { side, basis_points })) })
        }
        fn clear_pin(&self, _: Side) -> Fut<'_, ()> {
            Box::pin(async {})
        }
        fn wait_drained(&self, _: Side, _: Duration) -> Fut<'_, bool> {
            Box::pin(async { true })
        }
        fn switch(&self, _: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>> {
            unreachable!("the canary never switches")
        }
        fn switch_here(&self, _: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>> {
            unreachable!("the canary never switches")
        }
        fn rollback_target(&self) -> Fut<'_, Result<Side, SwitchError>> {
            unreachable!("the canary never rolls back by a switch")
        }
        fn history(&self) -> Fut<'_, Vec<SwitchRecord>> {
            Box::pin(async { Vec::new() })
        }
        fn start_shadow(&self, _: ShadowOptions) -> Fut<'_, Result<Arc<Shadow>, ControlError>> {
            unreachable!("the canary does not shadow")
        }
        fn stop_shadow(&self) -> Fut<'_, Result<Arc<Shadow>, ControlError>> {
            unreachable!("the canary does not shadow")
        }
        fn stop_shadow_run<'a>(&'a self, _: &'a Arc<Shadow>) -> Fut<'a, ()> {
            Box::pin(async {})
        }
        fn share_shadow<'a>(&'a self, _: u64, _: &'a Arc<Shadow>, _: bool, _: u64) -> Fut<'a, ()> {
            Box::pin(async {})
        }
        fn shadow_settled(&self, _: u64, _: Duration) -> Fut<'_, ()> {
            Box::pin(async {})
        }
        fn end_shared_shadow(&self) -> Fut<'_, ()> {
            Box::pin(async {})
        }
    }

    /// Runs the canary step of a deploy of v2 to green (blue live, v1) with
    /// these shares, each side's traffic as given; what it ended with and
    /// every weight it asked for.
    async fn run(shares: &[u16], blue: Traffic, green: Traffic) -> (StepEnd, Vec<u16>) {
        let dir = tempfile::tempdir().unwrap();
        let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [environments.blue]\nupstreams = [\"127.0.0.1:9\"]\n\
             [environments.green]\nupstreams = [\"127.0.0.2:9\"]\n\
             [deploy]\ndeploy_timeout = \"5s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\ninterval = \"200ms\"\nmin_requests = 20\nmax_error_rate = 0.05\n\
             consecutive = 1\non_inconclusive = \"fail\"\n";
        let config = Config::parse(text, "canary.toml", dir.path()).unwrap();
        let deploy = config.deploy.clone().unwrap();
        let fake = Arc::new(Fake {
            config: Arc::new(config),
            started: Instant::now(),
            traffic: Sides { blue, green },
            weights: Mutex::new(Vec::new()),
        });
        let store = Arc::new(bluegreen_store::FileStore::open(&dir.path().join("state")).unwrap());
        let p = Pipeline::with_routing(fake.clone(), store, deploy, dir.path()).unwrap();
        let options = DeployOptions {
            canary: shares.to_vec(),
            canary_step_ms: 500,
            ..Default::default()
        };
        let d = DeployRecord::new(1, "v2".into(), Side::Blue, Some("v1".into()), options, 0);
        p.book.lock().await.current = Some(d.clone());
        let handle = RunHandle {
            id: 1,
            abort: CancellationToken::new(),
            abort_reason: Mutex::new(None),
            promote: tokio::sync::Notify::new(),
            baseline_start: Window::default(),
        };
        let end = canary(&p, &handle, &d).await;
        let weights = fake.weights.lock().unwrap().clone();
        (end, weights)
    }

    const GOOD: Traffic = Traffic {
        per_sec: 400.0,
        failing: 0.0,
    };

    #[tokio::test]
    async fn a_good_canary_takes_every_share_in_turn_and_passes() {
        let (end, weights) = run(&[1_000, 5_000], GOOD, GOOD).await;
        assert!(matches!(end, StepEnd::Done(_)), "{end:?}");
        assert_eq!(weights, [1_000, 5_000], "each share, in order, and no more");
    }

    #[tokio::test]
    async fn a_canary_that_fails_sends_everyone_back_at_once() {
        let bad = Traffic {
            per_sec: 400.0,
            failing: 0.5,
        };
        let (end, weights) = run(&[1_000, 5_000], GOOD, bad).await;
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
        let silent = Traffic {
            per_sec: 0.0,
            failing: 0.0,
        };
        let (end, weights) = run(&[1_000], GOOD, silent).await;
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
