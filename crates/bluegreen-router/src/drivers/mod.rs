//! Routers other than our own, behind one interface. At a switch the
//! control asks the driver to make the new side live in the router the user
//! runs before it persists and swaps its own state; a driver that cannot
//! (the router's own check fails, it does not reload, it does not confirm
//! the new side in time) puts back what it changed, and the switch is
//! refused with the router's own words. bluegreen's proxy (`builtin`)
//! needs no driver: its snapshot swap is the switch.

pub mod alb;
pub mod dry_run;
pub mod haproxy;
pub mod haproxy_api;
pub mod haproxy_stats;
pub mod kubernetes;
pub mod nginx;
pub mod nginx_log;

use crate::plane::Plane;
use bluegreen_core::config::router::RouterKind;
use bluegreen_core::config::Config;
use bluegreen_core::Side;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A future a driver returns (boxed: drivers are used as `dyn`).
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a driven router did not take a change. It was left as it was
/// (what was written is put back), unless `message` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{router}: {message}")]
pub struct DriverError {
    pub router: &'static str,
    pub message: String,
}

/// A router bluegreen drives.
pub trait Driver: Send + Sync {
    /// `nginx`, ...
    fn name(&self) -> &'static str;
    /// Makes `live` the side the router sends live traffic to (and the
    /// other side the preview's), confirmed; a sentence for the record.
    fn apply<'a>(&'a self, config: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>>;
    /// At start: the router is given the side the state says is live. A
    /// router that is not running yet is not an error (it reads the file
    /// when it starts); one that refuses the file is.
    fn start<'a>(&'a self, config: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>>;
    /// Follows the router's own traffic into each side's counters until
    /// `stop`, so the judge sees the requests it carried.
    fn follow(&self, plane: Arc<Plane>, stop: CancellationToken);
}

/// The driver `config` asks for; `None` for bluegreen's own proxy.
pub fn of(config: &Config) -> Option<Arc<dyn Driver>> {
    match &config.router {
        RouterKind::Builtin => None,
        RouterKind::Nginx(n) => Some(Arc::new(nginx::Nginx::new(n.clone()))),
        RouterKind::Haproxy(h) => Some(Arc::new(haproxy::Haproxy::new(h.clone()))),
        RouterKind::Kubernetes(k) => {
            Some(Arc::new(dry_run::DryRun(kubernetes::Kubernetes(k.clone()))))
        }
        RouterKind::Alb(a) => Some(Arc::new(dry_run::DryRun(alb::Alb(a.clone())))),
    }
}

/// The file bluegreen keeps for a router (nginx's include, HAProxy's map)
/// as it is; `None` when there is none (any other read error refuses: a
/// file we cannot read is not ours to replace).
pub(crate) async fn read_ours(path: &Path) -> Result<Option<String>, String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read {}, so nothing was written: {e}",
            path.display()
        )),
    }
}

/// `write_atomic` off the async threads.
pub(crate) async fn write_ours(path: &Path, text: &str) -> Result<(), String> {
    let (p, t) = (path.to_path_buf(), text.to_string());
    tokio::task::spawn_blocking(move || write_atomic(&p, &t))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes a file a router reads atomically (temp file, fsync, rename,
/// directory fsync): the router never reads half of it, and it survives
/// a crash.
pub(crate) fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("bluegreen-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The socket addresses of `upstreams` (`HOST:PORT`), as routers name
/// them.
pub(crate) async fn resolve(upstreams: &[String]) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    for u in upstreams {
        if let Ok(addrs) = tokio::net::lookup_host(u.as_str()).await {
            out.extend(addrs);
        }
    }
    out
}
