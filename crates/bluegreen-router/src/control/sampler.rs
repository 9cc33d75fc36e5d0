//! The per-second series of both sides' live traffic (the dashboard's
//! charts and `tick` events), and the end of a shadow run that is complete.

use super::Router;
use bluegreen_core::Sides;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Samples both sides' live counters every `every`, keeps the series and
/// emits a `tick` event per point, until `stop`.
pub fn spawn_sampler(router: Arc<Router>, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last = Sides::from_fn(|s| router.live_window(s));
        let mut at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let secs = at.elapsed().as_secs_f64().max(0.001);
            at = tokio::time::Instant::now();
            let snap = router.snapshot();
            let now = Sides::from_fn(|s| snap.pools[s].live_stats.window());
            let sides = Sides::from_fn(|s| {
                let in_flight = snap.pools[s]
                    .upstreams
                    .iter()
                    .map(|u| u.outstanding())
                    .sum();
                crate::events::point_of(&now[s], &last[s], secs, in_flight)
            });
            last = now;
            let point = crate::events::Point {
                t_ms: crate::taps::shadow::now_ms(),
                live: snap.live,
                sides,
            };
            if router.events.listening() {
                router
                    .events
                    .emit(crate::events::Event::Tick(point.clone()));
            }
            if let Some(s) = &snap.shadow {
                if s.complete() {
                    router.stop_shadow_run(s).await;
                } else if router.events.listening() {
                    router
                        .events
                        .emit(crate::events::Event::Shadow(Box::new(s.report())));
                }
            }
            router.series.push(point);
        }
    });
}
