//! Upgraded connections (WebSocket and other `Upgrade` protocols). They leave
//! hyper's connection tracking once upgraded, so the router tracks them: they
//! count on their side, survive a switch, and are cut only when the old side's
//! drain deadline passes or the router shuts down.

use crate::request::body::InFlight;
use crate::upstream::pool::Pool;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Joins the client's and the upstream's upgraded streams and copies bytes
/// both ways until one side closes, the drain deadline cuts it, or shutdown.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: InFlight,
    pool: Arc<Pool>,
    shutdown: CancellationToken,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let counter = pool.upgraded_counter();
    counter.fetch_add(1, Ordering::Relaxed);
    let cut = guard.epoch().map(|e| e.cut_token().clone());
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let outcome = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok(_) => "closed",
            Err(_) => "error",
        },
        _ = async { match &cut { Some(t) => t.cancelled().await, None => std::future::pending().await } } => "drain timeout",
        _ = shutdown.cancelled() => "shutdown",
    };
    counter.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(side = %pool.side, upstream = %guard.upstream().address, outcome, "upgraded connection ended");
    drop(guard);
}
