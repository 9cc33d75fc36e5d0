//! State changes as events (for `GET /api/v1/events`), and the per-second
//! traffic series the dashboard charts. A broadcast channel: nobody
//! listening costs nothing, and a slow listener misses events rather than
//! slowing the router (it is told how many it missed).

use crate::taps::shadow::ShadowReport;
use bluegreen_core::bake::{Breach, Window};
use bluegreen_core::deploy::DeployRecord;
use bluegreen_core::health::Health;
use bluegreen_core::state::SwitchRecord;
use bluegreen_core::{Side, Sides};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::broadcast;

/// Events a listener may fall behind by before it starts missing some.
const CAPACITY: usize = 1024;
/// Points kept: ten minutes at one per second.
pub const SERIES_POINTS: usize = 600;

/// One state change. Every event the router and the pipeline announce is
/// one of these; [`Event::name`] and [`Event::data`] are the one place they
/// become the event stream's name and JSON.
#[derive(Debug, Clone)]
pub enum Event {
    /// The live side changed.
    Switch(SwitchEvent),
    /// An upstream's health flipped (an active check or a failed connect).
    Health {
        side: Side,
        upstream: String,
        health: Health,
        reason: Option<String>,
    },
    /// A shadow run's report (every second while it runs, and at its end).
    Shadow(Box<ShadowReport>),
    /// One second of per-side traffic.
    Tick(Point),
    /// A deploy record after a step changed.
    Deploy(Box<DeployRecord>),
    /// Certificate files changed: loaded (`ok`), or kept out with the reason.
    Tls { ok: bool, detail: String },
    /// A config reload: applied (what changed) or refused (why).
    Reload { ok: bool, detail: String },
    /// Live traffic paused or resumed.
    Pause { on: bool, detail: String },
    /// Maintenance mode on or off.
    Maintenance {
        on: bool,
        detail: String,
        /// When the maintenance that went on (or ended) began (Unix ms):
        /// the same on every node, so a cluster tells of it once.
        since_ms: Option<u64>,
    },
    /// A weighted split set or ended.
    Weight { detail: String },
    /// The link to the shared store (etcd) was lost or is back.
    Cluster { ok: bool, detail: String },
    /// Migration files were applied (`expand` before a deploy, `contract`
    /// once the old side is stopped or by hand), or a contract failed.
    Migration {
        phase: &'static str,
        deploy_id: u64,
        version: String,
        ok: bool,
        detail: String,
    },
    /// A bake verdict: `ok`, `waiting`, `inconclusive` or `breach`.
    Bake {
        deploy_id: u64,
        verdict: &'static str,
        detail: String,
        breach: Option<Breach>,
        /// The window judged, the baseline, the limits and when the bake
        /// ends: what the dashboard's release view draws.
        view: Option<serde_json::Value>,
    },
}

/// What a `switch` event says.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchEvent {
    pub from: Side,
    pub to: Side,
    pub kind: &'static str,
    pub generation: u64,
    pub forced: bool,
    pub actor: String,
    pub reason: String,
    pub at_unix_ms: u64,
    pub record: SwitchRecord,
}

impl Event {
    /// The event stream's event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Switch(_) => "switch",
            Event::Health { .. } => "health",
            Event::Shadow(_) => "shadow",
            Event::Tick(_) => "tick",
            Event::Deploy(_) => "deploy",
            Event::Bake { .. } => "bake",
            Event::Tls { .. } => "tls",
            Event::Reload { .. } => "reload",
            Event::Pause { .. } => "pause",
            Event::Maintenance { .. } => "maintenance",
            Event::Weight { .. } => "weight",
            Event::Cluster { .. } => "cluster",
            Event::Migration { .. } => "migration",
        }
    }

    /// The event's JSON, as the dashboard and `--watch` read it.
    pub fn data(&self) -> serde_json::Value {
        let value = match self {
            Event::Switch(s) => serde_json::to_value(s),
            Event::Health {
                side,
                upstream,
                health,
                reason,
            } => Ok(
                serde_json::json!({"side": side, "upstream": upstream, "health": health, "reason": reason}),
            ),
            Event::Shadow(r) => Ok(serde_json::json!({ "shadow": r })),
            Event::Tick(p) => serde_json::to_value(p),
            Event::Tls { ok, detail }
            | Event::Reload { ok, detail }
            | Event::Cluster { ok, detail } => Ok(serde_json::json!({"ok": ok, "detail": detail})),
            Event::Pause { on, detail } | Event::Maintenance { on, detail, .. } => {
                Ok(serde_json::json!({"on": on, "detail": detail}))
            }
            Event::Weight { detail } => Ok(serde_json::json!({"detail": detail})),
            Event::Migration {
                phase,
                deploy_id,
                version,
                ok,
                detail,
            } => Ok(
                serde_json::json!({"phase": phase, "deploy_id": deploy_id, "version": version, "ok": ok, "detail": detail}),
            ),
            Event::Deploy(d) => serde_json::to_value(d),
            Event::Bake {
                deploy_id,
                verdict,
                detail,
                breach,
                view,
            } => {
                let mut v = serde_json::json!({"deploy_id": deploy_id, "verdict": verdict, "detail": detail});
                if let Some(b) = breach {
                    v["breach"] = serde_json::to_value(b).unwrap_or_default();
                }
                if let Some(view) = view {
                    v["view"] = view.clone();
                }
                Ok(v)
            }
        };
        value.unwrap_or_default()
    }
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
    /// Sends to whoever listens (nobody listening is fine, and costs only
    /// building the event: call sites with costly events check `listening`).
    pub fn emit(&self, event: Event) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(event);
    }

    /// True when someone listens (so building an event is worth it).
    pub fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// How many listen now (event streams: dashboards, `--watch`, `--follow`).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
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

    pub(crate) fn push(&self, p: Point) {
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        if points.len() == SERIES_POINTS {
            points.pop_front();
        }
        points.push_back(p);
    }
}

pub(crate) fn point_of(now: &Window, before: &Window, secs: f64, in_flight: usize) -> SidePoint {
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
