//! The deploy pipeline: deploy → health → smoke → warm → shadow → gate →
//! switch → bake → decommission, each step persisted before and after it
//! runs, so a crash at any point resumes from the step it was in.
//!
//! This file only wires the modules. `pipeline/` is the public face
//! (`Pipeline`: start, promote, abort, rollback, history, the fence that
//! serialises what decides a side's role), `error` what it refuses with;
//! `runner/` executes
//! the steps, one file each; `supervisor` runs app processes; `command` runs
//! hooks; `smoke` runs HTTP checks; with several nodes, `cluster` holds the
//! deploy lock and `watchdog` judges each node's own traffic while a bake's
//! node is gone.
#![forbid(unsafe_code)]

mod cluster;
pub mod command;
pub mod migrate;
pub mod resources;
pub mod routing;
mod runner;
mod shared;
pub mod smoke;
pub mod supervisor;
mod watchdog;

mod error;
mod pipeline;

pub use error::{PipelineError, RollbackResult};
pub(crate) use pipeline::{exe, now_ms, RunHandle};
pub use pipeline::{outcome_name, Pipeline};
pub use routing::Routing;
