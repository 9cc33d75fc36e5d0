//! A router for the steps' in-process tests that only counts: each side's
//! live traffic is what the test scripts (requests before the test, requests
//! a second since, the share of them that fail); weights, switches and
//! events asked for are kept for the test to read; a switch moves `live`.

use super::*;
use crate::routing::{Fut, Routing};
use bluegreen_core::config::Config;
use bluegreen_core::deploy::DeployOptions;
use bluegreen_core::latency::{bucket, Histogram};
use bluegreen_core::state::{Split, SwitchRecord};
use bluegreen_core::Sides;
use bluegreen_router::shadow::{Shadow, ShadowShare};
use bluegreen_router::{ControlError, SwitchError, SwitchOutcome};
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Traffic of one side.
#[derive(Clone, Copy, Debug)]
pub(super) struct Traffic {
    /// Requests counted before the test began (another node's, a first run's).
    pub before: u64,
    pub per_sec: f64,
    /// The share of requests that fail (5xx).
    pub failing: f64,
}

pub(super) const GOOD: Traffic = Traffic {
    before: 0,
    per_sec: 400.0,
    failing: 0.0,
};

pub(super) const SILENT: Traffic = Traffic {
    before: 0,
    per_sec: 0.0,
    failing: 0.0,
};

pub(super) const FAILING: Traffic = Traffic {
    before: 0,
    per_sec: 400.0,
    failing: 0.5,
};

pub(super) struct Fake {
    config: Arc<Config>,
    started: Instant,
    traffic: Sides<Traffic>,
    pub live: Mutex<Side>,
    pub weights: Mutex<Vec<u16>>,
    pub switches: Mutex<Vec<SwitchRequest>>,
    pub history: Mutex<Vec<SwitchRecord>>,
    /// `(verdict, detail)` of every bake event.
    pub bake_events: Mutex<Vec<(String, String)>>,
    /// Every switch fails with this (a store that is down).
    pub switch_fails: Mutex<Option<String>>,
    /// The sessions pin in effect: (side, until Unix ms).
    pub pin: Mutex<Option<(Side, u64)>>,
}

impl Fake {
    pub(super) fn window(&self, side: Side) -> Window {
        let t = self.traffic[side];
        let requests = t.before + (t.per_sec * self.started.elapsed().as_secs_f64()) as u64;
        let mut latency = Histogram::default();
        latency.counts[bucket(Duration::from_millis(10))] = requests;
        Window {
            requests,
            errors: (requests as f64 * t.failing) as u64,
            latency,
            ..Default::default()
        }
    }

    /// The sides traffic was switched to, in order.
    pub(super) fn switched_to(&self) -> Vec<Side> {
        self.switches.lock().unwrap().iter().map(|s| s.to).collect()
    }
}

/// Lines a test adds to the config's `[deploy]`, `[deploy.hooks]` and
/// `[deploy.bake]`.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub deploy: &'a str,
    pub hooks: &'a str,
    pub bake: &'a str,
}

/// A deploy of v2 from blue (v1) to green, with its pipeline, on a fake
/// router whose live side is `live`.
pub(super) struct Setup {
    pub fake: Arc<Fake>,
    pub p: Arc<Pipeline>,
    pub d: DeployRecord,
    pub handle: RunHandle,
    _dir: tempfile::TempDir,
}

pub(super) async fn setup(
    live: Side,
    blue: Traffic,
    green: Traffic,
    extra: Extra<'_>,
    options: DeployOptions,
) -> Setup {
    let Extra {
        deploy,
        hooks,
        bake,
    } = extra;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [environments.blue]\nupstreams = [\"127.0.0.1:9\"]\n\
         [environments.green]\nupstreams = [\"127.0.0.2:9\"]\n\
         [deploy]\ndeploy_timeout = \"5s\"\n{deploy}\n[deploy.hooks]\ndeploy = \"true\"\n{hooks}\n\
         [deploy.bake]\ninterval = \"200ms\"\nmin_requests = 20\nmax_error_rate = 0.05\n\
         consecutive = 1\non_inconclusive = \"fail\"\n{bake}\n"
    );
    let config = Config::parse(&text, "fake.toml", dir.path()).unwrap();
    let deploy = config.deploy.clone().unwrap();
    let fake = Arc::new(Fake {
        config: Arc::new(config),
        started: Instant::now(),
        traffic: Sides { blue, green },
        live: Mutex::new(live),
        weights: Mutex::new(Vec::new()),
        switches: Mutex::new(Vec::new()),
        history: Mutex::new(Vec::new()),
        bake_events: Mutex::new(Vec::new()),
        switch_fails: Mutex::new(None),
        pin: Mutex::new(None),
    });
    let store = Arc::new(bluegreen_store::FileStore::open(&dir.path().join("state")).unwrap());
    let p = Pipeline::with_routing(fake.clone(), store, deploy, dir.path()).unwrap();
    let d = DeployRecord::new(1, "v2".into(), Side::Blue, Some("v1".into()), options, 0);
    p.book.lock().await.current = Some(d.clone());
    let handle = RunHandle {
        id: 1,
        abort: CancellationToken::new(),
        abort_reason: Mutex::new(None),
        promote: tokio::sync::Notify::new(),
        baseline_start: Window::default(),
    };
    Setup {
        fake,
        p,
        d,
        handle,
        _dir: dir,
    }
}

impl Routing for Fake {
    fn config(&self) -> Arc<Config> {
        self.config.clone()
    }
    fn live(&self) -> Side {
        *self.live.lock().unwrap()
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
        *self.pin.lock().unwrap()
    }
    fn shadow_shares(&self, _: u64) -> Vec<(String, ShadowShare)> {
        Vec::new()
    }
    fn emit(&self, event: Event) {
        if let Event::Bake {
            verdict, detail, ..
        } = event
        {
            self.bake_events
                .lock()
                .unwrap()
                .push((verdict.to_string(), detail));
        }
    }
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
    fn switch(&self, req: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>> {
        let done = match self.switch_fails.lock().unwrap().clone() {
            Some(why) => Err(SwitchError::Unavailable(why)),
            None => {
                let from = std::mem::replace(&mut *self.live.lock().unwrap(), req.to);
                let mut history = self.history.lock().unwrap();
                let record = SwitchRecord {
                    generation: history.len() as u64 + 2,
                    at: String::new(),
                    at_unix_ms: now_ms(),
                    from,
                    to: req.to,
                    kind: req.kind,
                    forced: req.forced,
                    actor: req.actor.clone(),
                    reason: req.reason.clone(),
                };
                history.push(record.clone());
                Ok(SwitchOutcome {
                    changed: from != req.to,
                    live: req.to,
                    generation: record.generation,
                    record: Some(record),
                    message: format!("live: {}", req.to),
                    converged: None,
                    revision: 0,
                })
            }
        };
        self.switches.lock().unwrap().push(req);
        Box::pin(async move { done })
    }
    fn switch_here(&self, req: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>> {
        self.switch(req)
    }
    fn rollback_target(&self) -> Fut<'_, Result<Side, SwitchError>> {
        let last = self.history.lock().unwrap().last().map(|r| r.from);
        Box::pin(async move { last.ok_or(SwitchError::NoHistory) })
    }
    fn history(&self) -> Fut<'_, Vec<SwitchRecord>> {
        let history = self.history.lock().unwrap().clone();
        Box::pin(async move { history })
    }
    fn start_shadow(&self, _: ShadowOptions) -> Fut<'_, Result<Arc<Shadow>, ControlError>> {
        unimplemented!("the fake does not shadow")
    }
    fn stop_shadow(&self) -> Fut<'_, Result<Arc<Shadow>, ControlError>> {
        unimplemented!("the fake does not shadow")
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
