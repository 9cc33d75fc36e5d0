//! Request ids: a random per-process prefix and a counter, so every request
//! gets a unique `X-Request-Id` without a random number per request.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};

/// The header the id travels in (a valid one from the client is kept).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes request ids: a random per-process prefix and a counter, so ids are
/// unique without a random number per request.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    /// Seeds the prefix from the OS's random source, falling back to time and pid.
    pub fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        let prefix = match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                t ^ ((std::process::id() as u64) << 32)
            }
        };
        RequestIds {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// Sets `X-Request-Id` unless the client sent a valid one.
    pub fn ensure(&self, headers: &mut HeaderMap) {
        self.ensure_known(headers, true)
    }

    /// `ensure`, told whether an `X-Request-Id` is there at all (from
    /// `request::headers::scan_names`), so the common request skips a lookup.
    pub fn ensure_known(&self, headers: &mut HeaderMap, present: bool) {
        if present && valid_request_id(headers) {
            return;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(self.prefix, &mut buf[..16]);
        hex(n, &mut buf[16..]);
        let value = HeaderValue::from_bytes(&buf).expect("hex is a valid header value");
        headers.insert(X_REQUEST_ID.clone(), value);
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// A client's request id is kept when it looks like one (1 to 128 of
/// `A-Z a-z 0-9 - _ . : / + =`, sent once); anything else is replaced, so
/// logs and apps never see a forged or oversized id.
fn valid_request_id(headers: &HeaderMap) -> bool {
    let mut all = headers.get_all(&X_REQUEST_ID).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return false;
    };
    (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}
