//! The bluegreen data plane.
//!
//! Every request loads one [`snapshot::Snapshot`] from an atomic pointer and is
//! routed wholly by it: the live side (or, on the preview listener, the idle
//! side), that side's upstream pool, the side's drain epoch, the taps and the
//! request-path settings. A switch builds a new snapshot and swaps it in one
//! store; requests already running keep the snapshot they loaded, and the old
//! side drains up to `switch.drain_timeout`.
//!
//! One folder per concern (docs/architecture.md has the module table):
//! - `request/`: the request path: head checks and rewrites, the client's
//!   body, sending with retries, answers, upgrades, errors as statuses.
//! - `upstream/`: pools of upstreams, their connections and health checks.
//! - `taps/`: what else gets a copy of live traffic: recording, shadowing.
//! - `control`: switch, rollback, drain and taps on/off, all through one
//!   routing change; `status`: the view the API and CLI show.
//! - `listener`, `downstream`: accept loops and client connections;
//!   `snapshot`, `settings`, `stats`, `events`.
// One audited exception: `memory::release_free_memory` (glibc's malloc_trim).
#![deny(unsafe_code)]

pub mod client_body;
pub mod control;
mod crypto;
pub mod downstream;
pub mod drivers;
pub mod events;
pub mod listener;
pub mod memory;
pub mod notify;
pub mod plane;
pub mod request;
pub mod settings;
pub mod snapshot;
pub mod stats;
pub mod status;
pub mod taps;
pub mod tls;
pub mod upstream;

// The paths other crates use, kept stable across the layout.
pub use request::{error, headers};
pub use taps::{recorder, shadow};
pub use upstream::{health, pool};

pub use control::{
    ClusterStatus, ControlError, Convergence, NodeReport, NodeStatus, Router, SwitchError,
    SwitchOutcome,
};
pub use plane::clients::ListenerKind;
pub use plane::Plane;
