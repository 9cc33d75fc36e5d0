//! Active health checks: one loop per upstream, each on its own interval,
//! opening a fresh connection every time (as HAProxy does) so a dead
//! listener is never hidden behind a pooled connection. They connect as
//! requests do (`conn::connect`), TLS included, so a bad upstream
//! certificate shows as unhealthy before it gets traffic.

use crate::control::Router;
use crate::upstream::conn;
use crate::upstream::pool::Upstream;
use bluegreen_core::config::HealthConfig;
use bluegreen_core::error_chain;
use bluegreen_core::health::Health;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{Either, Full};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts a check loop for every upstream of both sides. The loops stop when
/// `stop` is cancelled; wait on the returned tracker to see them finish.
pub fn spawn(router: &Arc<Router>, stop: CancellationToken) -> TaskTracker {
    let tracker = TaskTracker::new();
    router.set_health_tasks(tracker.clone(), stop);
    let snap = router.snapshot();
    for pool in [&snap.pools.blue, &snap.pools.green] {
        for upstream in &pool.upstreams {
            watch(router, upstream.clone());
        }
    }
    tracker.close();
    tracker
}

/// Starts checking one upstream (one a reload added), until the router
/// stops or a reload removes it.
pub fn watch(router: &Arc<Router>, upstream: Arc<Upstream>) {
    if let Some((tracker, stop)) = router.health_tasks() {
        tracker.spawn(check_loop(router.clone(), upstream, stop));
    }
}

/// Checks one upstream every `health.interval`, reading `[health]` afresh
/// each time: a reload's new path, interval and timeout apply at the next
/// check.
async fn check_loop(router: Arc<Router>, upstream: Arc<Upstream>, stop: CancellationToken) {
    let mut first = true;
    loop {
        let config = router.config().health.clone();
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(config.interval) => {}
                _ = stop.cancelled() => return,
                _ = upstream.retired.cancelled() => return,
            }
        }
        first = false;
        let uri: Uri = match config.path.parse() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(upstream = %upstream.address, error = %e, "cannot build health check URI");
                return;
            }
        };
        let epoch = upstream.check_epoch();
        let result = tokio::select! {
            r = check_once(&upstream, &uri, &config) => r,
            _ = stop.cancelled() => return,
            _ = upstream.retired.cancelled() => return,
        };
        if let Some(flipped) = upstream.record_check_from(epoch, result) {
            router.events.emit(crate::events::Event::Health {
                side: upstream.side,
                upstream: upstream.address.clone(),
                health: flipped,
                reason: upstream.last_error(),
            });
            match flipped {
                Health::Healthy => {
                    tracing::info!(side = %upstream.side, upstream = %upstream.address, "upstream is healthy")
                }
                _ => {
                    tracing::warn!(side = %upstream.side, upstream = %upstream.address, error = upstream.last_error().unwrap_or_default(), "upstream is unhealthy")
                }
            }
        }
    }
}

async fn check_once(upstream: &Upstream, uri: &Uri, config: &HealthConfig) -> Result<(), String> {
    let req = Request::get(uri.clone())
        .header(
            "host",
            upstream
                .tls
                .as_ref()
                .and_then(|t| t.host_header(&upstream.address))
                .unwrap_or_else(|| upstream.authority.to_string()),
        )
        .header("user-agent", "bluegreen-health")
        .body(Either::Right(Full::new(Bytes::new())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let mut sender = conn::connect(&upstream.address, config.timeout, upstream.tls.as_deref())
            .await
            .map_err(|e| format!("health check failed: {e}"))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("health check failed: {}", error_chain(&e)))
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Err(_) => Err(format!(
            "health check timed out after {}",
            humantime::format_duration(config.timeout)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
        Ok(Ok(resp)) => Err(format!("health check answered {}", resp.status())),
    }
}
