//! The pure core of bluegreen: plain data and functions, no I/O beyond reading
//! a config file. Everything here is unit-tested without a network.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod bake;
pub mod config;
pub mod counts;
pub mod deploy;
pub mod diff;
pub mod health;
pub mod input;
pub mod latency;
pub mod migration;
pub mod rank;
pub mod record;
pub mod rollback;
pub mod shadow;
pub mod side;
pub mod state;

pub use side::{Side, Sides};

/// An error and its sources on one line (`outer: inner: root`), for messages
/// that must say where a failure came from.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
