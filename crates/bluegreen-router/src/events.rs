//! State changes as events (for `GET /api/v1/events`), and the per-second
//! traffic series the dashboard charts. A broadcast channel: nobody
//! listening costs nothing, and a slow listener misses events rather than
//! slowing the router (it is told how many it missed).

use crate::control::Router;
use bluegreen_core::bake::Window;
use bluegreen_core::{Side, Sides};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events a listener may fall behind by before it starts missing some.
const CAPACITY: usize = 1024;
/// Points kept: ten minutes at one per second.
pub const SERIES_POINTS: usize = 600;

/// One state change: an SSE event name and its JSON data.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: serde_json::Value,
}

/// The event channel.
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Sends to whoever listens (nobody listening is fine).
    pub fn emit(&self, name: &'static str, data: impl Serialize) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Ok(data) = serde_json::to_value(data) {
            let _ = self.tx.send(Event { name, data });
        }
    }

    /// True when someone listens (so building an event is worth it).
    pub fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new listener, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// One side's live traffic during one second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SidePoint {
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub in_flight: usize,
}

/// One second of both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_ms: u64,
    pub live: Side,
    pub sides: Sides<SidePoint>,
}

/// The last ten minutes, one point per second.
#[derive(Default)]
pub struct Series {
    points: Mutex<VecDeque<Point>>,
}

impl Series {
    /// Points oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, p: Point) {
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        if points.len() == SERIES_POINTS {
            points.pop_front();
        }
        points.push_back(p);
    }
}

fn point_of(now: &Window, before: &Window, secs: f64, in_flight: usize) -> SidePoint {
    let w = now.since(before);
    let ms = |d: Duration| (d.as_micros() as f64 / 10.0).round() / 100.0;
    SidePoint {
        rps: w.requests as f64 / secs,
        error_rate: w.error_rate(),
        p50_ms: w.latency.quantile(0.5).map(ms),
        p99_ms: w.latency.quantile(0.99).map(ms),
        in_flight,
    }
}

/// Samples both sides' live counters every `every`, keeps the series and
/// emits a `tick` event per point, until `stop`.
pub fn spawn_sampler(router: Arc<Router>, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last = Sides::from_fn(|s| router.live_window(s));
        let mut at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let secs = at.elapsed().as_secs_f64().max(0.001);
            at = tokio::time::Instant::now();
            let snap = router.snapshot();
            let now = Sides::from_fn(|s| snap.pools[s].live_stats.window());
            let sides = Sides::from_fn(|s| {
                let in_flight = snap.pools[s]
                    .upstreams
                    .iter()
                    .map(|u| u.outstanding())
                    .sum();
                point_of(&now[s], &last[s], secs, in_flight)
            });
            last = now;
            let point = Point {
                t_ms: crate::taps::shadow::now_ms(),
                live: snap.live,
                sides,
            };
            router.events.emit("tick", &point);
            if let Some(s) = &snap.shadow {
                if s.complete() {
                    router.stop_shadow_run(s).await;
                } else if router.events.listening() {
                    router
                        .events
                        .emit("shadow", serde_json::json!({"shadow": s.report()}));
                }
            }
            router.series.push(point);
        }
    });
}
