//! What else gets a copy of live traffic: a recording to a file, and the
//! shadow copies sent to the idle side and compared. Each is a field of the
//! routing snapshot: off, it costs the request path one branch.

pub mod recorder;
pub mod shadow;
