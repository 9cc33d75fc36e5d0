//! Why a pipeline request was refused, and what a rollback did.

use bluegreen_core::deploy::DeployRecord;
use bluegreen_router::{SwitchError, SwitchOutcome};
use bluegreen_store::StoreError;
use serde::{Deserialize, Serialize};

/// Why a pipeline request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("deploy #{id} ({version}) is in progress (step {step}); wait for it or run `bluegreen abort`")]
    Busy {
        id: u64,
        version: String,
        step: String,
    },
    /// The side asked for has no running app (the message says what to do).
    #[error("{0}")]
    Stopped(String),
    /// A version or deploy env entry that cannot be used (the message says why).
    #[error("{0}")]
    BadInput(String),
    #[error("no deploy is waiting at the manual gate")]
    NotWaiting,
    #[error("no deploy is in progress")]
    NoDeploy,
    #[error(
        "deploy #{0} is past the bake; the new version is live. Use `bluegreen rollback` instead"
    )]
    TooLateToAbort(u64),
    #[error("no deploy with id {0}")]
    NotFound(u64),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Supervisor(String),
    /// Another deploy activity of this node is starting or ending.
    #[error("{0}")]
    Finishing(String),
    /// Migrations could not be read, checked or applied.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("the deploy lock is held by node {0}: deploys run there (use that node's admin API), or wait until it is done")]
    Elsewhere(String),
}

/// Why a piece of a step did not do its work, by kind; the step's end,
/// the deploy's reason or the log says it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// Unsafe now (the side is live, taken over, or another deploy is on
    /// it): nothing changed.
    #[error("{0}")]
    Refused(String),
    /// What had to be written durably was not; `what` says what it was.
    #[error("{what}: {source}")]
    Persist {
        what: &'static str,
        source: StoreError,
    },
    /// A hook or the app's migration command failed; `what` names it.
    #[error("{what}: {source}")]
    Command {
        what: String,
        source: crate::command::CommandError,
    },
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    /// It ran and failed; the message says what it left behind.
    #[error("{0}")]
    Failed(String),
    /// The supervisor could not stop the app.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackResult {
    pub message: String,
    /// The instant switch back, when the old side was still up.
    pub switched: Option<SwitchOutcome>,
    /// The re-deploy started, when the old side had been decommissioned.
    pub redeploy: Option<DeployRecord>,
}
