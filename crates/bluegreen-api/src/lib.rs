//! The admin API: JSON over HTTP, bearer-token auth, on a loopback listener by
//! default. Also the small client the CLI uses to call it.
#![forbid(unsafe_code)]

pub mod client;
mod error;
pub mod lifecycle;
mod metrics;
mod routes;
pub mod types;

pub use client::{AdminClient, ClientError};
pub use error::ApiError;
pub use routes::app;
