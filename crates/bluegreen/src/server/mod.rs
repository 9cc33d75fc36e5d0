//! The serving process: `serve` (the router, the admin API and the
//! pipeline, started in order), `reload`, the hitless `upgrade` with its
//! sockets and readiness notices, and what the running process holds.

pub mod admin;
pub mod notify;
pub mod reload;
pub mod running;
pub mod serve;
pub mod sockets;
pub mod startup;
pub mod upgrade;
