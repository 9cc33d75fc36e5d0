//! The upstreams of each side: pools with their health and load (how a
//! request picks one), a keep-alive connection list per upstream, and the
//! active health checks; HTTPS to them when a side asks for it.

pub mod conn;
pub mod health;
pub mod pool;
pub mod tls;
