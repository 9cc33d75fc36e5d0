//! What else gets a copy of live traffic: a recording to a file, and the
//! shadow copies sent to the idle side and compared. Each is a field of the
//! routing snapshot: off, it costs the request path one branch.

pub mod recorder;
pub mod shadow;

use http::header::HeaderMap;

/// Headers as (lower-case name, value) strings, for records and comparisons.
pub fn header_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
