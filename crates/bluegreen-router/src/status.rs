//! The router as the API and CLI show it. Serialisable both ways so the CLI
//! can read what the API wrote.

use bluegreen_core::health::Health;
use bluegreen_core::state::SwitchRecord;
use bluegreen_core::{Side, Sides};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whole-router status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub live: Side,
    /// Side live before the last switch (the rollback target).
    pub previous: Option<Side>,
    pub generation: u64,
    pub last_switch: Option<SwitchRecord>,
    /// Listener name to bound address.
    pub listeners: BTreeMap<String, String>,
    pub drain_timeout_ms: u64,
    pub sides: Sides<SideStatus>,
    /// The TLS certificates in use: names, issuer, expiry.
    #[serde(default)]
    pub certificates: Vec<crate::tls::CertInfo>,
    /// Where ACME stands (next attempt, failures, last error), if configured.
    #[serde(default)]
    pub acme: Option<crate::tls::acme::AcmeState>,
    /// Live traffic paused (`bluegreen pause`): since when, how many wait.
    #[serde(default)]
    pub paused: Option<crate::control::PauseStatus>,
    /// Maintenance mode, if on.
    #[serde(default)]
    pub maintenance: Option<bluegreen_core::state::Maintenance>,
    /// A weighted split of live traffic (canary), if any.
    #[serde(default)]
    pub split: Option<bluegreen_core::state::Split>,
    /// Sessions kept on the old side after the last switch, if any.
    #[serde(default)]
    pub sessions: Option<SessionsStatus>,
    /// Every router node sharing the state, with a shared store (etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::control::ClusterStatus>,
    /// `[[notify]]` hooks whose oldest notice could not be delivered yet
    /// (on the node that delivers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::notify::HookTrouble>,
}

/// `[sessions]` at work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsStatus {
    /// The side clients are kept on, and until when (Unix ms).
    pub pinned_side: Option<bluegreen_core::Side>,
    pub until_ms: Option<u64>,
    /// Requests kept on each side by their session since start.
    pub pinned_requests: bluegreen_core::Sides<u64>,
}

/// One environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideStatus {
    /// "live" or "idle".
    pub role: String,
    pub healthy: usize,
    pub upstreams: Vec<UpstreamStatus>,
    /// Requests in flight on this side, live and preview.
    pub in_flight: usize,
    /// Open upgraded (WebSocket) connections.
    pub upgraded: usize,
    /// Present while live traffic of this side drains after a switch away.
    pub draining: Option<DrainStatus>,
}

/// One upstream instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub address: String,
    pub health: Health,
    pub outstanding: usize,
    pub last_error: Option<String>,
    /// Requests waiting for a place (`proxy.upstream_max_requests`).
    #[serde(default)]
    pub queued: usize,
    /// Its limit of requests served at once (0: none).
    #[serde(default)]
    pub max_requests: usize,
}

/// Progress of a drain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainStatus {
    /// Live-traffic requests and connections still running on this side.
    pub remaining: usize,
    /// Milliseconds until whatever remains is cut.
    pub deadline_in_ms: u64,
}
