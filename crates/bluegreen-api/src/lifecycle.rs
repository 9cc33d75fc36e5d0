//! What the admin API can ask of the process itself: hand over to a new
//! binary (`bluegreen upgrade`). The process (`serve`) owns the work; the
//! API only sends the request and waits for the answer.

use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// A request to the serving process.
#[derive(Debug)]
pub enum Control {
    /// Start `binary` (default: the running one) on our sockets and hand
    /// over to it; the answer says which process serves now, or why not.
    Upgrade {
        binary: Option<PathBuf>,
        /// How long the new process may take to be ready (default 60 s).
        ready_timeout: Option<std::time::Duration>,
        reply: oneshot::Sender<Result<Upgraded, String>>,
    },
    /// Read the config file again and apply what can change live.
    Reload {
        reply: oneshot::Sender<Result<Reloaded, ReloadError>>,
    },
}

/// A reload that was applied (possibly with nothing to change).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reloaded {
    /// What changed, key by key.
    pub applied: Vec<String>,
    /// What changed in the file but waits for `bluegreen upgrade`.
    pub needs_upgrade: Vec<String>,
    pub message: String,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone)]
pub enum ReloadError {
    /// The file does not parse or validate: every problem, with file and key.
    InvalidConfig(String),
    /// Valid, but applying it failed (a CA file went away meanwhile...).
    Failed(String),
}

/// A handover that happened.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Upgraded {
    /// The new process.
    pub pid: u32,
    pub binary: String,
    pub message: String,
}

/// Where the API sends requests.
pub type ControlSender = mpsc::Sender<Control>;
