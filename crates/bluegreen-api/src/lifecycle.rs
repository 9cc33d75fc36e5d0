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
        reply: oneshot::Sender<Result<Upgraded, String>>,
    },
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
