//! Collects every problem of a config with its key, while raw values are
//! converted: one run of `check` shows all of them.

use super::{ConfigIssue, MAX_DURATION};
use std::net::SocketAddr;
use std::time::Duration;

/// Collects issues while converting raw values.
pub(super) struct Checker {
    pub(super) issues: Vec<ConfigIssue>,
}

impl Checker {
    pub(super) fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn addr(&mut self, key: &str, raw: &str) -> Option<SocketAddr> {
        match raw.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(
                    key,
                    format!("invalid address {raw:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }

    /// `raw` (relative to `base`) if it is a readable file.
    pub(super) fn file(
        &mut self,
        key: &str,
        base: &std::path::Path,
        raw: &str,
    ) -> Option<std::path::PathBuf> {
        let path = base.join(raw);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.issue(key, format!("{} is not a file", path.display()));
                None
            }
            Err(e) => {
                self.issue(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// `raw` (relative to `base`) if it is a file holding PEM certificates.
    pub(super) fn pem_file(
        &mut self,
        key: &str,
        base: &std::path::Path,
        raw: &str,
    ) -> Option<std::path::PathBuf> {
        let path = base.join(raw);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.contains("-----BEGIN CERTIFICATE-----") => Some(path),
            Ok(_) => {
                self.issue(key, format!("{} holds no PEM certificate", path.display()));
                None
            }
            Err(e) => {
                self.issue(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    pub(super) fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw) {
            Ok(d) if d.is_zero() => {
                self.issue(key, format!("duration {raw:?} must be greater than zero"));
                default
            }
            Ok(d) if d > MAX_DURATION => {
                self.issue(
                    key,
                    format!(
                        "duration {raw:?} is too long: at most {}",
                        humantime::format_duration(MAX_DURATION)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.issue(
                    key,
                    format!("invalid duration {raw:?} ({e}): use a number with a unit, e.g. \"500ms\", \"2s\", \"1m\""),
                );
                default
            }
        }
    }

    pub(super) fn int(
        &mut self,
        key: &str,
        raw: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        let Some(v) = raw else { return default };
        if v < min || v > max {
            self.issue(key, format!("{v} is out of range: expected {min}..={max}"));
            return default;
        }
        v
    }

    pub(super) fn upstream(&mut self, key: &str, raw: &str) -> Option<String> {
        if let Ok(a) = raw.parse::<SocketAddr>() {
            if a.port() == 0 {
                self.issue(
                    key,
                    format!("invalid upstream {raw:?}: port 0 is not a port to connect to"),
                );
                return None;
            }
            return Some(raw.to_string());
        }
        let valid = raw.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if valid {
            Some(raw.to_string())
        } else {
            self.issue(
                key,
                format!("invalid upstream {raw:?}: expected HOST:PORT, e.g. \"127.0.0.1:9001\""),
            );
            None
        }
    }
}
