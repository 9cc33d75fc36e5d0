//! The view of the router the API and CLI show.

use super::Router;
use crate::status::{DrainStatus, SideStatus, Status, UpstreamStatus};
use bluegreen_core::Sides;
use std::time::Instant;

impl Router {
    /// A consistent view of the router for the API and CLI.
    pub async fn status(&self) -> Status {
        let state = self.state.lock().await.clone();
        let snap = self.snapshot.load_full();
        let deadlines = self
            .drain_deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = Instant::now();
        // Before the literal: its temporaries (the listeners' guard) live
        // to the end of it, and the cluster view reads the listeners too.
        let cluster = self.cluster_status();
        Status {
            live: snap.live,
            previous: state.rollback_target().ok(),
            generation: state.generation,
            last_switch: state.history.last().cloned(),
            listeners: self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            drain_timeout_ms: self.config().switch.drain_timeout.as_millis() as u64,
            certificates: self.certificates(),
            acme: self.acme(),
            paused: self.paused(),
            maintenance: self.maintenance(),
            split: self.split(),
            sessions: self.snapshot.load().sessions.as_ref().map(|_| {
                let pinned = self.pinned_requests();
                let pin = self.pin();
                crate::status::SessionsStatus {
                    pinned_side: pin.map(|p| p.0),
                    until_ms: pin.map(|p| p.1),
                    pinned_requests: bluegreen_core::Sides {
                        blue: pinned[0],
                        green: pinned[1],
                    },
                }
            }),
            cluster,
            notify: self.notifier().map(|n| n.troubles()).unwrap_or_default(),
            sides: Sides::from_fn(|side| {
                let pool = &snap.pools[side];
                let epoch = &snap.epochs[side];
                SideStatus {
                    role: if side == snap.live { "live" } else { "idle" }.to_string(),
                    healthy: pool.healthy_count(),
                    upstreams: pool
                        .upstreams
                        .iter()
                        .map(|u| {
                            let (queued, max_requests, _) = u.queue();
                            UpstreamStatus {
                                address: u.address.clone(),
                                health: u.health(),
                                outstanding: u.outstanding(),
                                last_error: u.last_error(),
                                queued,
                                max_requests,
                            }
                        })
                        .collect(),
                    in_flight: pool.upstreams.iter().map(|u| u.outstanding()).sum(),
                    upgraded: pool.upgraded(),
                    // A drain with nothing left in it is over, whatever
                    // its deadline says.
                    draining: match (
                        epoch.is_draining() && side != snap.live && epoch.inflight() > 0,
                        deadlines[side],
                    ) {
                        (true, Some(d)) => Some(DrainStatus {
                            remaining: epoch.inflight(),
                            deadline_in_ms: d.saturating_duration_since(now).as_millis() as u64,
                        }),
                        _ => None,
                    },
                }
            }),
        }
    }
}
