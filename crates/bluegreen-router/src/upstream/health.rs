//! Active health checks: one loop per upstream, each on its own interval,
//! on one keep-alive connection of its own (a new connection every second
//! left 110+ sockets in TIME-WAIT per upstream at rest). The connection is
//! opened again whenever it closed: an app that died takes its sockets
//! with it, so its next check connects and is refused. A check that fails
//! on the kept connection is tried once more on a new one, so a keep-alive
//! race never reads as a failure. They connect as requests do
//! (`conn::connect`), TLS included, so a bad upstream certificate shows as
//! unhealthy before it gets traffic.

use crate::plane::Plane;
use crate::upstream::conn;
use crate::upstream::conn::UpstreamBody;
use crate::upstream::pool::Upstream;
use bluegreen_core::config::HealthConfig;
use bluegreen_core::error_chain;
use bluegreen_core::health::Health;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Either, Full};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts a check loop for every upstream of both sides. The loops stop when
/// `stop` is cancelled; wait on the returned tracker to see them finish.
pub fn spawn(plane: &Arc<Plane>, stop: CancellationToken) -> TaskTracker {
    let tracker = TaskTracker::new();
    plane.set_health_tasks(tracker.clone(), stop);
    let snap = plane.snapshot();
    for pool in [&snap.pools.blue, &snap.pools.green] {
        for upstream in &pool.upstreams {
            watch(plane, upstream.clone());
        }
    }
    tracker.close();
    tracker
}

/// Starts checking one upstream (one a reload added), until the router
/// stops or a reload removes it.
pub fn watch(plane: &Arc<Plane>, upstream: Arc<Upstream>) {
    if let Some((tracker, stop)) = plane.health_tasks() {
        tracker.spawn(check_loop(plane.clone(), upstream, stop));
    }
}

/// Checks one upstream every `health.interval`, reading `[health]` afresh
/// each time: a reload's new path, interval and timeout apply at the next
/// check.
async fn check_loop(plane: Arc<Plane>, upstream: Arc<Upstream>, stop: CancellationToken) {
    let mut first = true;
    let mut kept: Option<conn::Sender> = None;
    let mut kept_epoch = upstream.check_epoch();
    loop {
        let config = plane.config().health.clone();
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
        // A new version was put on it (or its health is in doubt): its
        // checks speak to whatever listens now, on a new connection.
        if epoch != kept_epoch || upstream.health() != Health::Healthy {
            kept = None;
            kept_epoch = epoch;
        }
        let result = tokio::select! {
            r = check_once(&upstream, &uri, &config, &mut kept) => r,
            _ = stop.cancelled() => return,
            _ = upstream.retired.cancelled() => return,
        };
        if let Some(flipped) = upstream.record_check_from(epoch, result) {
            plane.events.emit(crate::events::Event::Health {
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

async fn check_once(
    upstream: &Upstream,
    uri: &Uri,
    config: &HealthConfig,
    kept: &mut Option<conn::Sender>,
) -> Result<(), String> {
    let exchange = async {
        // The kept connection first; a failure there (it may have closed
        // just now) is tried again on a new one before it counts.
        if let Some(mut sender) = kept.take().filter(|s| !s.is_closed()) {
            if sender.ready().await.is_ok() {
                if let Ok(resp) = sender.send_request(request(upstream, uri)?).await {
                    *kept = Some(sender);
                    return Ok(resp);
                }
            }
        }
        let mut sender = conn::connect(&upstream.address, config.timeout, upstream.tls.as_deref())
            .await
            .map_err(|e| format!("health check failed: {e}"))?;
        let resp = sender
            .send_request(request(upstream, uri)?)
            .await
            .map_err(|e| format!("health check failed: {}", error_chain(&e)))?;
        *kept = Some(sender);
        Ok(resp)
    };
    let result = match tokio::time::timeout(config.timeout, exchange).await {
        Err(_) => Err(format!(
            "health check timed out after {}",
            humantime::format_duration(config.timeout)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(resp)) => {
            let status = resp.status();
            // Read to the end, so the connection can carry the next check.
            let _ = tokio::time::timeout(config.timeout, resp.into_body().collect()).await;
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("health check answered {status}"))
            }
        }
    };
    if result.is_err() {
        // Whatever state it is in, it is not trusted for the next check.
        *kept = None;
    }
    result
}

/// One health check request.
fn request(upstream: &Upstream, uri: &Uri) -> Result<Request<UpstreamBody>, String> {
    Request::get(uri.clone())
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
        .map_err(|e| e.to_string())
}
