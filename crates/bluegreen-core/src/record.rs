//! The traffic record format: one JSON object per line, bodies in base64, so
//! a record survives any bytes and can be appended to and read back in a
//! stream. A malformed or truncated line is an error naming its line number.
//!
//! ```text
//! {"v":1,"at_ms":1732262400000,"method":"GET","path":"/users/7?x=1","headers":[["accept","*/*"]],"body":""}
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Version of the line format.
pub const RECORD_FORMAT: u32 = 1;

/// Header values replaced by this when redacted.
pub const REDACTED: &str = "[redacted]";

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    pub v: u32,
    /// When it arrived, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// Base64 of the body (possibly cut at the record's body cap).
    pub body: String,
    /// Status of the live answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// True when the body was larger than the recording's body cap (or of
    /// unknown length) and is not in the record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_omitted: bool,
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RecordError {
    pub line: usize,
    pub reason: String,
}

impl Recorded {
    /// A record of a request; headers named in `redact` keep their name
    /// with the value replaced.
    pub fn new(
        at_ms: u64,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: &[u8],
        redact: &[String],
    ) -> Recorded {
        let headers = headers
            .into_iter()
            .map(|(k, v)| {
                if redact.iter().any(|r| r.eq_ignore_ascii_case(&k)) {
                    (k, REDACTED.to_string())
                } else {
                    (k, v)
                }
            })
            .collect();
        Recorded {
            v: RECORD_FORMAT,
            at_ms,
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body: STANDARD.encode(body),
            status: None,
            body_omitted: false,
        }
    }

    /// The line to append (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a record serialises")
    }

    /// The decoded body.
    pub fn body_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }

    /// Reads line `line` (1-based, for the message) of a record file.
    pub fn parse(text: &str, line: usize) -> Result<Recorded, RecordError> {
        let err = |reason: String| RecordError { line, reason };
        let r: Recorded = serde_json::from_str(text).map_err(|e| {
            if e.is_eof() {
                err("truncated record (the file may have been cut mid-write)".into())
            } else {
                err(format!("malformed record: {e}"))
            }
        })?;
        if r.v != RECORD_FORMAT {
            return Err(err(format!(
                "record format {} is not supported (this build reads {RECORD_FORMAT})",
                r.v
            )));
        }
        if !r.path.starts_with('/') {
            return Err(err(format!("path {:?} must start with '/'", r.path)));
        }
        if r.method.is_empty() || !r.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(format!("method {:?} is not an HTTP method", r.method)));
        }
        STANDARD
            .decode(&r.body)
            .map_err(|e| err(format!("body is not base64: {e}")))?;
        Ok(r)
    }

    /// Reads a whole record file; blank lines are skipped.
    pub fn parse_all(text: &str) -> Result<Vec<Recorded>, RecordError> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| Recorded::parse(l, i + 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_body_and_redacts_secrets() {
        let body = [0u8, 159, 146, 150, b'\n', b'"'];
        let r = Recorded::new(
            5,
            "POST",
            "/upload?x=1",
            vec![
                ("authorization".into(), "Bearer s3cret".into()),
                ("accept".into(), "*/*".into()),
            ],
            &body,
            &["Authorization".to_string(), "cookie".to_string()],
        );
        let line = r.to_line();
        assert!(!line.contains('\n') && !line.contains("s3cret"));
        let back = Recorded::parse(&line, 1).unwrap();
        assert_eq!(back.body_bytes(), body);
        assert_eq!(back.headers[0].1, REDACTED);
        assert_eq!(back, r);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let good = Recorded::new(1, "GET", "/", vec![], b"", &[]).to_line();
        let truncated = &good[..good.len() - 5];
        let text = format!("{good}\n\n{good}\n{truncated}\n");
        let err = Recorded::parse_all(&text).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.to_string().contains("line 4: truncated"), "{err}");
        let bad = good.replace("\"GET\"", "\"get\"");
        assert!(Recorded::parse(&bad, 9)
            .unwrap_err()
            .to_string()
            .contains("line 9: method"));
        let bad = good.replace("\"body\":\"\"", "\"body\":\"***\"");
        assert!(Recorded::parse(&bad, 2)
            .unwrap_err()
            .reason
            .contains("base64"));
        assert_eq!(
            Recorded::parse_all(&format!("{good}\n{good}\n"))
                .unwrap()
                .len(),
            2
        );
    }
}
