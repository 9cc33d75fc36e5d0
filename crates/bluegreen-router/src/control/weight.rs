//! A weighted split of live traffic (`bluegreen weight green 10`): the
//! other side gets that share of the clients, always the same ones (by
//! their sticky key), persisted and swapped in like a switch. A switch ends
//! it; 0 ends it too.

use super::{describe_health, Change, ControlError, Router};
use crate::events::Event;
use bluegreen_core::state::Split;
use bluegreen_core::Side;

impl Router {
    /// Sends `basis_points` of 10,000 clients to `side` (the idle side);
    /// 0 sends everyone back to the live side.
    pub async fn set_weight(
        &self,
        side: Side,
        basis_points: u16,
        forced: bool,
    ) -> Result<Option<Split>, ControlError> {
        if let Some(router) = self.driven().filter(|_| basis_points > 0) {
            return Err(ControlError::refused(
                "weight_refused",
                format!("weights are bluegreen's own proxy's: {router} (router.kind) carries live traffic, and bluegreen switches it whole"),
            ));
        }
        if basis_points >= 10_000 {
            return Err(ControlError::refused(
                "weight_refused",
                "a weight of 100% is a switch: use `bluegreen switch`",
            ));
        }
        let split = self
            .route(move |state, current| {
                if side == state.live {
                    return Err(ControlError::refused("weight_refused", format!(
                        "{side} is live; a weight sends part of the traffic to the idle side ({})",
                        side.other()
                    )));
                }
                if basis_points > 0 && !forced && current.pools[side].healthy_count() == 0 {
                    return Err(ControlError::refused("weight_refused", format!(
                        "{side} has no healthy upstream ({}); not weighted (pass --force, API: \"force\": true, to weight it anyway)",
                        describe_health(&current.pools[side])
                    )));
                }
                let split = (basis_points > 0).then_some(Split { side, basis_points });
                let mut next = state.clone();
                next.split = split;
                Ok(Change {
                    state: Some(next),
                    edit: Some(Box::new(move |s| {
                        if split.is_some() {
                            s.epochs[side].revive();
                        }
                        s.split = split;
                    })),
                    value: split,
                })
            })
            .await?;
        let detail = match split {
            Some(s) => format!(
                "{}% of clients to {}",
                s.basis_points as f64 / 100.0,
                s.side
            ),
            None => format!("no split: all live traffic to {}", side.other()),
        };
        tracing::info!("weight: {detail}");
        self.events.emit(Event::Weight { detail });
        Ok(split)
    }

    /// A preview link's path (`/.bluegreen/preview?t=TOKEN`) for the idle
    /// side, valid for `secs`: the browser that opens it on the live
    /// listener sees the idle side (its own cookies, the real hostname).
    pub fn preview_link(&self, secs: u64) -> Result<(String, Side), ControlError> {
        let snap = self.snapshot.load();
        if snap.sessions.is_none() {
            return Err(ControlError::refused(
                "no_sessions",
                "preview links need a [sessions] table in the config",
            ));
        }
        let side = snap.live.other();
        let token = self.signer.preview_token(side, secs);
        Ok((
            format!("{}?t={token}", crate::request::session::PREVIEW_PATH),
            side,
        ))
    }

    /// Requests kept on the old side by their session cookie, per side.
    pub fn pinned_requests(&self) -> [u64; 2] {
        [
            self.pinned[0].load(std::sync::atomic::Ordering::Relaxed),
            self.pinned[1].load(std::sync::atomic::Ordering::Relaxed),
        ]
    }

    /// The sessions pin in effect: (side, until Unix ms).
    pub fn pin(&self) -> Option<(Side, u64)> {
        self.snapshot.load().pin.map(|p| (p.side, p.until_ms))
    }

    /// Ends the sessions pin to `side` (a deploy is putting a new version
    /// there).
    pub async fn clear_pin(&self, side: Side) {
        let _ = self
            .route(move |_, current| {
                Ok::<_, String>(match current.pin {
                    Some(pin) if pin.side == side => Change::snapshot(|s| s.pin = None, ()),
                    _ => Change::none(()),
                })
            })
            .await;
    }

    /// The split in effect, if any.
    pub fn split(&self) -> Option<Split> {
        self.snapshot.load().split
    }
}
