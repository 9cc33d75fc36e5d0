//! The pure core of bluegreen: plain data and functions, no I/O beyond reading
//! a config file. Everything here is unit-tested without a network.
#![forbid(unsafe_code)]

pub mod config;
pub mod health;
pub mod side;
pub mod state;

pub use side::{Side, Sides};
