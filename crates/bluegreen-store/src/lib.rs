//! Where router state lives. A small interface so the embedded file store can
//! later sit beside an etcd store without the router noticing.
#![forbid(unsafe_code)]

mod file;

pub use file::FileStore;

use bluegreen_core::state::{InvalidState, RouterState};
use std::path::PathBuf;

/// Persists the router state. Implementations make `save` atomic: after a
/// crash at any moment, `load` returns either the old or the new state whole.
pub trait StateStore: Send + Sync + 'static {
    /// The saved state, or `None` when nothing was ever saved.
    fn load(&self) -> Result<Option<RouterState>, StoreError>;
    /// Replaces the saved state atomically and durably.
    fn save(&self, state: &RouterState) -> Result<(), StoreError>;
    /// Where the state lives, for messages.
    fn describe(&self) -> String;
}

/// Store failures, each naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({reason}); refusing to start with an unknown live side. Fix or move the file aside (a fresh state starts with switch.initial_live)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state file {path} is not usable: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InvalidState,
    },
    #[error(
        "state dir {path} is in use by another bluegreen process (lock file {path}/lock is held)"
    )]
    Locked { path: PathBuf },
}
