//! Why a control call changed nothing, typed: the admin API maps each case
//! to one status and code in one place (`bluegreen-api`'s `error.rs`), the
//! CLI maps those to exit codes, and the pipeline shows the message.

use super::{PersistFailed, Refusal};

/// A control call that changed nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request does not fit the routing state as it is (already
    /// paused, not recording, no healthy upstream, ...); `code` names the
    /// case for clients (`already_paused`, `not_recording`, ...).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// Something the call needed failed (a file that could not be read in
    /// time, ...); `code` names the call (`reload_failed`). Nothing changed.
    #[error("{message}")]
    Failed { code: &'static str, message: String },
    /// The state could not be written (disk, or etcd mid-call).
    #[error("could not persist the router state: {0}")]
    Persist(String),
    /// The shared store is out of reach: the node fails static.
    #[error("could not persist the router state: {0}")]
    Unavailable(String),
    /// Another node changed the state first.
    #[error("could not persist the router state: {0}")]
    Conflict(String),
}

impl ControlError {
    /// The request does not fit the state: `code` says how.
    pub fn refused(code: &'static str, message: impl Into<String>) -> ControlError {
        ControlError::Refused {
            code,
            message: message.into(),
        }
    }
}

impl From<PersistFailed> for ControlError {
    fn from(e: PersistFailed) -> ControlError {
        match e.1 {
            Refusal::Failed => ControlError::Persist(e.0),
            Refusal::Unreachable => ControlError::Unavailable(e.0),
            Refusal::Conflict => ControlError::Conflict(e.0),
            Refusal::Router => ControlError::Failed {
                code: "router_refused",
                message: e.0,
            },
        }
    }
}
