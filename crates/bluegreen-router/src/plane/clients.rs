//! Which listener a client connection came in on, and how many are open:
//! the gauges the accept loops and connections count in, and the metrics
//! and the drain read.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// Which traffic a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Live traffic, routed to the live side.
    Main,
    /// Preview traffic, routed to the idle side only.
    Preview,
}

impl ListenerKind {
    /// Name used in logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Main => "proxy",
            ListenerKind::Preview => "preview",
        }
    }
}

/// How long an idle keep-alive connection is kept open at a plain stop's
/// drain for the client's next request (after a handover: the drain time,
/// `Router::drain_linger`).
pub(crate) const DRAIN_LINGER: Duration = Duration::from_millis(1000);

/// Open client connections of one listener, as the metrics show them.
#[derive(Debug, Default)]
pub struct ClientGauge {
    pub(crate) open: AtomicUsize,
    pub(crate) parked: AtomicUsize,
    /// Idle but still holding hyper's buffers (see `downstream::LINGER`).
    pub(crate) lingering: AtomicUsize,
    /// TLS connections past their handshake, and those of them with a
    /// response open (a TLS connection never parks: it is idle when none is).
    pub(crate) tls_open: AtomicUsize,
    pub(crate) tls_busy: AtomicUsize,
}

/// A reading of a [`ClientGauge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCount {
    /// Client connections open now.
    pub open: usize,
    /// Of those, idle keep-alive connections holding only their socket.
    pub parked: usize,
    /// Of those, every idle keep-alive connection: parked ones, and TLS
    /// ones with no response open.
    pub idle: usize,
}
