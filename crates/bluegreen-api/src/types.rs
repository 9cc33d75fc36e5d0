//! The admin API's request bodies, shared by the server (which parses them,
//! refusing unknown fields) and the CLI (which sends them), so the two
//! cannot drift. Every field is optional but a deploy's `version` and a
//! recording's `to`.

use bluegreen_core::deploy::{DeployRecord, SideRelease};
use bluegreen_core::Sides;
use bluegreen_router::status::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /api/v1/status` (and the event stream's `status`): the router's
/// view, with each side's release and the deploy in progress when there is
/// a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    #[serde(flatten)]
    pub router: Status,
    /// What each side runs (with a pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub releases: Option<Sides<SideRelease>>,
    /// The current or last deploy (with a pipeline; `null` when none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Option<DeployRecord>>,
    /// What `bluegreen rollback` would do now, in words (with a pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// The supervised apps' CPU, memory, descriptors and restarts per side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Sides<Option<bluegreen_pipeline::resources::SideResources>>>,
}

/// `POST /api/v1/switch` and `POST /api/v1/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchBody {
    /// Switch only: the side to make live (default: the idle side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Rollback only: go back to this version (re-deployed when not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/deploys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    pub version: String,
    #[serde(default)]
    pub manual_promote: bool,
    #[serde(default)]
    pub skip_smoke: bool,
    #[serde(default)]
    pub skip_shadow: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Canary shares in percent, growing (`[1, 10, 50]`), before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Vec<f64>>,
    /// How long each share runs, e.g. `"5m"` (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A bake or canary share with too little traffic to judge passes
    /// anyway, said so in the record.
    #[serde(default)]
    pub accept_inconclusive: bool,
}

/// `POST /api/v1/abort`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// `POST /api/v1/record/start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    /// A new file's name in `[record] dir`.
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redact: Option<Vec<String>>,
}

/// `POST /api/v1/shadow/start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowBody {
    /// Share of live requests mirrored (default: `[shadow] percent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Stop after this long, e.g. "10m".
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Stop sampling after this many mirrored requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// `POST /api/v1/shadow/accept`: a difference that is intended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    /// A JSON pointer (`/items/*/currency`; indexes as numbers or `*`), or
    /// `status`, `header:NAME`, `body`.
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// `POST /api/v1/migrations/contract`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractBody {
    /// Also while the old side still runs (rollback to it would break).
    #[serde(default)]
    pub force: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let b = SwitchBody {
            to_version: Some("v1".into()),
            force: true,
            ..Default::default()
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(text, r#"{"to_version":"v1","force":true}"#);
        let back: SwitchBody = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_version.as_deref(), Some("v1"));
        assert!(serde_json::from_str::<SwitchBody>(r#"{"too": "green"}"#).is_err());
        let s: ShadowBody = serde_json::from_str(r#"{"for": "10m"}"#).unwrap();
        assert_eq!(s.duration.as_deref(), Some("10m"));
    }
}

/// `POST /api/v1/upgrade`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    /// The binary to start (default: the running one's path, which a
    /// package upgrade has replaced).
    #[serde(default)]
    pub binary: Option<String>,
    /// How long the new process may take to say it is ready (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<String>,
}

/// `POST /api/v1/pause`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// How long one request may wait, e.g. `"30s"` (default 30s, at most 10m).
    #[serde(default)]
    pub timeout: Option<String>,
    /// How many requests may wait at once (default 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `POST /api/v1/maintenance`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    pub on: bool,
    /// The page's text (default: a short notice).
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds for `Retry-After` (default 120, at most 86400).
    #[serde(default)]
    pub retry_after: Option<u32>,
    #[serde(default)]
    pub actor: Option<String>,
}

/// `POST /api/v1/weight`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightBody {
    /// The side that gets the share (the idle side).
    pub side: String,
    /// Share of clients, 0 to below 100 (0.01 steps); 0 ends the split.
    pub percent: f64,
    #[serde(default)]
    pub force: bool,
}
