//! Failed client TLS handshakes, counted by a few fixed reasons (the plane
//! keeps the counters; the edge counts in them, `/metrics` reads them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a client may take to finish its handshake.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why a client's TLS handshake failed, as `/metrics` counts it: a few
/// fixed reasons, so that scanners cannot grow the label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not TLS, or malformed: plain HTTP, a scanner's probe.
    NotTls,
    /// No version, cipher suite or protocol in common.
    Incompatible,
    /// The client ended it with an alert (most often: it does not trust
    /// the certificate or its name).
    ClientAlert,
    /// The connection closed or reset before the handshake ended.
    Closed,
    /// Not done within [`HANDSHAKE`].
    Timeout,
    /// Anything else rustls refused.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in the order of their counters.
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::NotTls,
        HandshakeFailure::Incompatible,
        HandshakeFailure::ClientAlert,
        HandshakeFailure::Closed,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ClientAlert => "client_alert",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason of a failed `accept` (tokio-rustls wraps rustls's error
    /// in the `io::Error`).
    pub fn of(e: &std::io::Error) -> HandshakeFailure {
        use rustls::Error as E;
        match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
            Some(
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::PeerSentOversizedRecord,
            ) => HandshakeFailure::NotTls,
            Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => {
                HandshakeFailure::Incompatible
            }
            Some(E::AlertReceived(_)) => HandshakeFailure::ClientAlert,
            Some(_) => HandshakeFailure::Other,
            None => HandshakeFailure::Closed,
        }
    }
}

/// Failed client handshakes by reason, since this process started. Counted
/// rather than logged above debug: each is one client's doing, and a
/// scanner would fill the log with one line per connection.
#[derive(Debug, Default)]
pub struct HandshakeFailures([AtomicU64; HandshakeFailure::ALL.len()]);

impl HandshakeFailures {
    /// Counts one failure (with a debug line saying why).
    pub fn count(&self, listener: &str, why: HandshakeFailure, error: &dyn std::fmt::Display) {
        tracing::debug!(listener, reason = why.as_str(), %error, "TLS handshake failed");
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many failed for `why`.
    pub fn get(&self, why: HandshakeFailure) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }
}
