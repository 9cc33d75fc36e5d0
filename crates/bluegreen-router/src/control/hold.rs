//! Pause, resume and maintenance: fields of the routing snapshot, changed
//! through the same routing change as a switch. Maintenance is persisted
//! (it outlives a restart); a pause is not (held requests die with the
//! process anyway).

use super::{Change, ControlError, Router};
use crate::events::Event;
use crate::snapshot::hold::Hold;
use bluegreen_core::state::Maintenance;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a pause stands, for status and the API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PauseStatus {
    pub since_ms: u64,
    /// How long one request may wait.
    pub timeout_ms: u64,
    /// How many may wait at once.
    pub limit: usize,
    /// Waiting now.
    pub waiting: usize,
    /// Let through after waiting (set by `resume`).
    pub released: usize,
}

impl PauseStatus {
    pub fn of(h: &Hold) -> PauseStatus {
        PauseStatus {
            since_ms: h.since_ms,
            timeout_ms: h.timeout.as_millis() as u64,
            limit: h.limit,
            waiting: h.waiting(),
            released: h.released(),
        }
    }
}

impl Router {
    /// Holds new live requests until `resume` (each for at most `timeout`,
    /// at most `limit` at once); in-flight ones finish.
    pub async fn pause(
        &self,
        timeout: Duration,
        limit: usize,
    ) -> Result<PauseStatus, ControlError> {
        let hold = Arc::new(Hold::new(timeout, limit, now_ms()));
        let h = hold.clone();
        self.route(move |_, current| match &current.hold {
            Some(_) => Err(ControlError::refused(
                "already_paused",
                "traffic is already paused; resume it first",
            )),
            None => Ok(Change::snapshot(move |s| s.hold = Some(h), ())),
        })
        .await?;
        let status = PauseStatus::of(&hold);
        tracing::info!(timeout_ms = status.timeout_ms, limit, "live traffic paused");
        self.events.emit(Event::Pause {
            on: true,
            detail: format!(
                "paused: new requests wait up to {} ms (at most {limit} at once)",
                status.timeout_ms
            ),
        });
        Ok(status)
    }

    /// Lets the held requests go, in the order they came, and new ones
    /// through; says how many were waiting.
    pub async fn resume(&self) -> Result<PauseStatus, ControlError> {
        let hold = self
            .route(|_, current| match current.hold.clone() {
                None => Err(ControlError::refused("not_paused", "traffic is not paused")),
                Some(h) => Ok(Change::snapshot(|s| s.hold = None, h)),
            })
            .await?;
        let waiting = hold.waiting();
        hold.release();
        let status = PauseStatus {
            waiting,
            ..PauseStatus::of(&hold)
        };
        tracing::info!(released = waiting, "live traffic resumed");
        self.events.emit(Event::Pause {
            on: false,
            detail: format!("resumed: {waiting} held requests released"),
        });
        Ok(status)
    }

    /// The pause in effect, if any.
    pub fn paused(&self) -> Option<PauseStatus> {
        self.snapshot.load().hold.as_deref().map(PauseStatus::of)
    }

    /// Turns maintenance mode on (`Some`) or off; persisted before it takes
    /// effect.
    pub async fn set_maintenance(
        &self,
        on: Option<(String, u32, String)>,
    ) -> Result<Option<Maintenance>, ControlError> {
        let before = self.maintenance().map(|m| m.since_ms);
        let m = on.map(|(message, retry_after_secs, actor)| Maintenance {
            message,
            retry_after_secs,
            since_ms: now_ms(),
            actor,
        });
        let wanted = m.clone();
        self.route(move |state, _| {
            let mut next = state.clone();
            next.maintenance = wanted.clone();
            let snap = wanted.map(Arc::new);
            Ok::<_, ControlError>(Change {
                state: Some(next),
                edit: Some(Box::new(move |s| s.maintenance = snap)),
                value: (),
            })
        })
        .await?;
        let detail = match &m {
            Some(m) => format!("maintenance on: {}", m.message),
            None => "maintenance off".to_string(),
        };
        tracing::info!("{detail}");
        self.events.emit(Event::Maintenance {
            on: m.is_some(),
            detail,
            since_ms: m.as_ref().map(|m| m.since_ms).or(before),
        });
        Ok(m)
    }

    /// Maintenance mode, if on.
    pub fn maintenance(&self) -> Option<Maintenance> {
        self.snapshot.load().maintenance.as_deref().cloned()
    }
}
