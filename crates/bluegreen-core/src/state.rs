//! The router state that must survive restarts: which side is live and the
//! history of switches. Plain data; the store decides where it lives.

use crate::side::Side;
use serde::{Deserialize, Serialize};

/// Version of the persisted format; bumped on incompatible changes.
pub const STATE_FORMAT: u32 = 1;

/// How many switch records are kept; older ones are dropped first.
pub const HISTORY_LIMIT: usize = 1000;

/// Persisted router state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterState {
    /// Format version, checked on load.
    pub format: u32,
    /// The side that receives live traffic.
    pub live: Side,
    /// Number of switches ever made; also the generation of the routing snapshot.
    pub generation: u64,
    /// Most recent switches, oldest first.
    pub history: Vec<SwitchRecord>,
    /// Maintenance mode, kept across restarts until turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// A weighted split of live traffic (canary), until a switch or 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// Part of the live traffic goes to the other side: `basis_points` of
/// 10,000 clients (by their sticky key), always the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub side: Side,
    pub basis_points: u16,
}

/// Maintenance mode: the live listener answers `503` with this message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    pub message: String,
    /// Sent as `Retry-After`.
    pub retry_after_secs: u32,
    /// Milliseconds since the Unix epoch.
    pub since_ms: u64,
    pub actor: String,
}

/// One switch: when, from where to where, who asked and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRecord {
    /// Generation this switch produced.
    pub generation: u64,
    /// Wall-clock time, RFC 3339 UTC.
    pub at: String,
    /// Milliseconds since the Unix epoch (for sorting and arithmetic).
    pub at_unix_ms: u64,
    pub from: Side,
    pub to: Side,
    pub kind: SwitchKind,
    /// True when the health check of the target side was overridden.
    pub forced: bool,
    /// Who or what asked for it (user, pipeline, API client).
    pub actor: String,
    pub reason: String,
}

/// Why the live side changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchKind {
    Switch,
    Rollback,
}

/// What the caller supplies for a switch.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    pub to: Side,
    pub kind: SwitchKind,
    pub forced: bool,
    pub actor: String,
    pub reason: String,
}

/// Why a state transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{0} is already live")]
    AlreadyLive(Side),
    #[error("nothing to roll back to: no switch has been recorded")]
    NoHistory,
}

/// Problems found in a loaded state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    #[error("state format {found} is not supported (this build reads format {STATE_FORMAT})")]
    Format { found: u32 },
    #[error("history says {recorded} went live last, but live is {live}")]
    LiveMismatch { recorded: Side, live: Side },
    #[error("history generation {history} is ahead of the state generation {state}")]
    Generation { history: u64, state: u64 },
}

impl RouterState {
    /// State of a router that has never switched.
    pub fn initial(live: Side) -> Self {
        RouterState {
            format: STATE_FORMAT,
            live,
            generation: 0,
            history: Vec::new(),
            maintenance: None,
            split: None,
        }
    }

    /// The side that was live before the last switch, if there was one.
    pub fn rollback_target(&self) -> Result<Side, TransitionError> {
        self.history
            .last()
            .map(|r| r.from)
            .ok_or(TransitionError::NoHistory)
    }

    /// The state after a switch. Refuses a switch to the side already live.
    pub fn switched(
        &self,
        req: &SwitchRequest,
        at: String,
        at_unix_ms: u64,
    ) -> Result<RouterState, TransitionError> {
        if req.to == self.live {
            return Err(TransitionError::AlreadyLive(req.to));
        }
        let generation = self.generation + 1;
        let mut history = self.history.clone();
        if history.len() >= HISTORY_LIMIT {
            history.drain(..history.len() + 1 - HISTORY_LIMIT);
        }
        history.push(SwitchRecord {
            generation,
            at,
            at_unix_ms,
            from: self.live,
            to: req.to,
            kind: req.kind,
            forced: req.forced,
            actor: req.actor.clone(),
            reason: req.reason.clone(),
        });
        Ok(RouterState {
            format: STATE_FORMAT,
            live: req.to,
            generation,
            history,
            maintenance: self.maintenance.clone(),
            // A switch is whole: a canary split ends with it.
            split: None,
        })
    }

    /// Checks what a loaded state must satisfy before the router trusts it.
    pub fn validate(&self) -> Result<(), InvalidState> {
        if self.format != STATE_FORMAT {
            return Err(InvalidState::Format { found: self.format });
        }
        if let Some(last) = self.history.last() {
            if last.to != self.live {
                return Err(InvalidState::LiveMismatch {
                    recorded: last.to,
                    live: self.live,
                });
            }
            if last.generation > self.generation {
                return Err(InvalidState::Generation {
                    history: last.generation,
                    state: self.generation,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(to: Side, kind: SwitchKind) -> SwitchRequest {
        SwitchRequest {
            to,
            kind,
            forced: false,
            actor: "test".into(),
            reason: "because".into(),
        }
    }

    #[test]
    fn switch_records_history_and_bumps_generation() {
        let s0 = RouterState::initial(Side::Blue);
        assert_eq!(s0.rollback_target(), Err(TransitionError::NoHistory));
        let s1 = s0
            .switched(&req(Side::Green, SwitchKind::Switch), "t".into(), 1)
            .unwrap();
        assert_eq!(s1.live, Side::Green);
        assert_eq!(s1.generation, 1);
        assert_eq!(s1.rollback_target(), Ok(Side::Blue));
        s1.validate().unwrap();
        let s2 = s1
            .switched(&req(Side::Blue, SwitchKind::Rollback), "t".into(), 2)
            .unwrap();
        assert_eq!(s2.history.len(), 2);
        assert_eq!(s2.history[1].kind, SwitchKind::Rollback);
        assert_eq!(s2.rollback_target(), Ok(Side::Green));
    }

    #[test]
    fn switch_to_live_side_is_refused() {
        let s0 = RouterState::initial(Side::Blue);
        let err = s0
            .switched(&req(Side::Blue, SwitchKind::Switch), "t".into(), 1)
            .unwrap_err();
        assert_eq!(err, TransitionError::AlreadyLive(Side::Blue));
    }

    #[test]
    fn history_is_capped() {
        let mut s = RouterState::initial(Side::Blue);
        for i in 0..(HISTORY_LIMIT as u64 + 5) {
            s = s
                .switched(&req(s.live.other(), SwitchKind::Switch), "t".into(), i)
                .unwrap();
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history.last().unwrap().generation, s.generation);
        s.validate().unwrap();
    }

    #[test]
    fn validate_catches_inconsistent_state() {
        let mut s = RouterState::initial(Side::Blue)
            .switched(&req(Side::Green, SwitchKind::Switch), "t".into(), 1)
            .unwrap();
        s.live = Side::Blue;
        assert!(matches!(
            s.validate(),
            Err(InvalidState::LiveMismatch { .. })
        ));
        let mut s = RouterState::initial(Side::Blue);
        s.format = 99;
        assert!(s.validate().unwrap_err().to_string().contains("99"));
    }
}
