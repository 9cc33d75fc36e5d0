//! The bluegreen data plane.
//!
//! Every request loads one [`snapshot::Snapshot`] from an atomic pointer and is
//! routed wholly by it: the live side (or, on the preview listener, the idle
//! side), that side's upstream pool, and the side's drain epoch. A switch
//! builds a new snapshot and swaps it in one store; requests already running
//! keep the snapshot they loaded, and the old side drains up to
//! `switch.drain_timeout`.
//!
//! Layout: `snapshot` (what a request reads), `pool` (upstreams, health,
//! picking), `proxy` (the request path), `headers`, `body`, `tunnel`
//! (upgraded connections), `error` (the one place errors become status
//! codes), `health` (active checks), `listener` (accept loops and shutdown),
//! `control` (switch, rollback, drain, persistence), `status` (the view the
//! API and CLI show), `recorder` (traffic to a file), `shadow` (traffic
//! mirrored to the idle side and compared).
#![forbid(unsafe_code)]

pub mod body;
pub mod client_body;
pub mod conn;
pub mod control;
pub mod downstream;
pub mod error;
pub mod events;
pub mod headers;
pub mod health;
pub mod listener;
pub mod pool;
pub mod proxy;
pub mod recorder;
pub mod rewrite;
pub mod settings;
pub mod shadow;
pub mod snapshot;
pub mod stats;
pub mod status;
pub mod tunnel;

pub use control::{Router, SwitchError, SwitchOutcome};
pub use listener::ListenerKind;
