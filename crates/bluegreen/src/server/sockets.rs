//! Listening sockets: inherited (systemd socket activation, or a bluegreen
//! process handing over in a hitless upgrade, both by `LISTEN_FDS`) or
//! bound here. Each is kept as a duplicate so it can be handed to the next
//! process while this one still serves on it: the kernel queues
//! connections on the one socket both hold, so none is refused.

use anyhow::Context;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use tokio::net::TcpListener;

/// The sockets this process got and the ones it listens on.
#[derive(Default)]
pub struct Sockets {
    /// From `LISTEN_FDS`, with their `LISTEN_FDNAMES` name when given.
    inherited: Vec<(Option<String>, std::net::TcpListener)>,
    /// What this process listens on, by listener name, for a handover.
    held: Vec<(String, OwnedFd)>,
}

/// The names the sockets go by (`FileDescriptorName=` in a systemd socket
/// unit, and in a handover).
pub const NAMES: [&str; 5] = ["proxy", "preview", "admin", "https", "https_preview"];

impl Sockets {
    /// Takes what `LISTEN_FDS` passes, once, at start (before any thread:
    /// it clears the variables so app processes never see them).
    pub fn from_env() -> anyhow::Result<Sockets> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        std::env::remove_var("LISTEN_FDNAMES");
        let mut fds = listenfd::ListenFd::from_env();
        let mut inherited = Vec::new();
        for i in 0..fds.len() {
            let listener = fds
                .take_tcp_listener(i)
                .with_context(|| format!("inherited socket {} (LISTEN_FDS)", i + 3))?;
            if let Some(l) = listener {
                // listenfd marks it close-on-exec: app processes never
                // hold our sockets.
                inherited.push((names.get(i).cloned(), l));
            }
        }
        Ok(Sockets {
            inherited,
            held: Vec::new(),
        })
    }

    /// The listener `name` (one of [`NAMES`]) for `addr`: the inherited one
    /// of that name, or else one bound to that address, or a new one.
    pub async fn listen(
        &mut self,
        name: &str,
        addr: SocketAddr,
        key: &str,
    ) -> anyhow::Result<TcpListener> {
        let by_name = self
            .inherited
            .iter()
            .position(|(n, _)| n.as_deref() == Some(name));
        let by_addr = || {
            self.inherited.iter().position(|(n, l)| {
                !n.as_deref().is_some_and(|n| NAMES.contains(&n))
                    && addr.port() != 0
                    && l.local_addr().ok() == Some(addr)
            })
        };
        let listener = match by_name.or_else(by_addr) {
            Some(i) => {
                let (_, l) = self.inherited.remove(i);
                l.set_nonblocking(true)
                    .with_context(|| format!("inherited socket for {key}"))?;
                let got = l.local_addr()?;
                if addr.port() != 0 && got != addr {
                    // The config moved this listener (an upgrade after a
                    // reload named it): the old address closes with the
                    // old process, the new one is bound here.
                    tracing::info!(listener = key, from = %got, to = %addr, "listen address changed");
                    drop(l);
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr} ({key})"))?
                } else {
                    TcpListener::from_std(l)?
                }
            }
            None => TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ({key})"))?,
        };
        let dup = listener
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the socket of {key}"))?;
        self.held.push((name.to_string(), dup));
        Ok(listener)
    }

    /// Closes the inherited sockets no listener took (the config no longer
    /// has them), so no connection queues where nobody accepts; says which.
    pub fn close_unused(&mut self) -> Vec<String> {
        std::mem::take(&mut self.inherited)
            .iter()
            .map(|(n, l)| {
                format!(
                    "{} ({})",
                    n.as_deref().unwrap_or("unnamed"),
                    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The sockets to hand to a new process, in order, with their names.
    pub fn handover(&self) -> anyhow::Result<Vec<(String, OwnedFd)>> {
        self.held
            .iter()
            .map(|(n, fd)| Ok((n.clone(), fd.try_clone()?)))
            .collect()
    }
}
