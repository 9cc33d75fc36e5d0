//! The systemd notify protocol (`sd_notify`): `READY=1` once serving,
//! `RELOADING=1` while a new process takes over, `MAINPID=` when it has,
//! `STOPPING=1` at shutdown. A datagram to `$NOTIFY_SOCKET` (a path, or
//! `@name` in the abstract namespace); without one, nothing is sent.
//! A few lines of std rather than a crate.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;

/// Where notifications go (taken from the environment once, at start, so
/// app processes never inherit it).
pub struct Notifier {
    target: Mutex<Option<String>>,
}

/// The variable a handing-over bluegreen uses to pass systemd's socket on
/// (the new process's `NOTIFY_SOCKET` is the old process's own, until it
/// is ready).
pub const UPSTREAM_VAR: &str = "BLUEGREEN_NOTIFY_UPSTREAM";

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        std::env::remove_var("NOTIFY_SOCKET");
        Notifier {
            target: Mutex::new(target),
        }
    }

    /// Sends `state` (lines like `READY=1`); failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        let target = self
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(t) = target {
            if let Err(e) = send_to(&t, state) {
                tracing::warn!(socket = %t, error = %e, "systemd notify failed");
            }
        }
    }

    /// Where notifications go now.
    pub fn target(&self) -> Option<String> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// From now on, notify `target` instead (after a handover, systemd's
    /// socket rather than the old process's).
    pub fn redirect(&self, target: Option<String>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

/// One datagram to a notify socket.
pub fn send_to(target: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = address(target)?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// `@name` is Linux's abstract namespace; anything else a path.
pub fn address(target: &str) -> std::io::Result<SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(target),
    }
}

/// `MONOTONIC_USEC=` for `RELOADING=1` (systemd wants the clock).
pub fn monotonic_usec() -> u64 {
    // CLOCK_MONOTONIC through std: Instant is CLOCK_MONOTONIC on Linux,
    // but opaque; /proc/uptime is the same clock in seconds.
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1e6) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        let name = format!("bluegreen-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&address(&format!("@{name}")).unwrap()).unwrap();
        send_to(&format!("@{name}"), "READY=1\nMAINPID=42").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
    }
}
