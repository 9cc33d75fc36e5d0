//! HAProxy's own traffic, for the judge: `show stat` polled each second,
//! each side's backend counters (answers by status class) added to that
//! side's traffic as they grow, so the bake judges what HAProxy carried as
//! it judges bluegreen's own proxy. HAProxy gives no per-request times
//! there: each new answer is counted with the backend's `rtime` (the mean
//! of its last 1024 responses), so a latency threshold sees that mean, not
//! a tail. Counters are kept per HAProxy process (`show info`'s pid, read
//! on the same connection): after a reload the new worker counts from 0,
//! and while the old and the new one take turns on the socket each is
//! compared with itself.

use super::haproxy_api::{self, Api, BackendStat};
use crate::plane::Plane;
use bluegreen_core::config::router::HaproxyConfig;
use bluegreen_core::Side;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often `show stat` is read.
const POLL: Duration = Duration::from_secs(1);

/// HAProxy's counters as last read, and where new answers are counted.
pub struct Counters {
    api: Api,
    cfg: HaproxyConfig,
    plane: std::sync::OnceLock<Arc<Plane>>,
    /// The last counters read, by process; `None` before the first read
    /// (a baseline: what HAProxy answered before bluegreen is not counted).
    last: tokio::sync::Mutex<Option<Seen>>,
}

/// Counters by HAProxy process, the newest last (a few kept).
type Seen = Vec<(u32, BTreeMap<String, BackendStat>)>;

impl Counters {
    pub fn new(cfg: HaproxyConfig) -> Counters {
        Counters {
            api: Api {
                socket: cfg.socket.clone(),
                timeout: cfg.timeout,
            },
            cfg,
            plane: std::sync::OnceLock::new(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads `show stat` once and counts what each side answered since the
    /// last read. A switch calls it too, as soon as the map is committed:
    /// what the new side answered before the switch (the previous bake's
    /// failures) is counted before the bake's baseline, not after.
    pub async fn poll(&self) -> Result<(), String> {
        let Some(plane) = self.plane.get() else {
            return Ok(());
        };
        // One read at a time: the switch's and the poller's never cross.
        let mut last = self.last.lock().await;
        let out = self.api.run("show info;show stat").await?;
        let now = haproxy_api::stats(&out);
        let Some(pid) = haproxy_api::pid(&out).filter(|_| !now.is_empty()) else {
            return Err(format!(
                "`show info;show stat` gave no backend: {}",
                haproxy_api::one_line(&out)
            ));
        };
        let seen = last.get_or_insert_with(|| vec![(pid, now.clone())]);
        let empty = BTreeMap::new();
        let before = match seen.iter().position(|(p, _)| *p == pid) {
            Some(i) => seen.remove(i).1,
            // A new process (reloaded): everything it counted is new.
            None => empty,
        };
        count(plane, &self.cfg, &before, &now);
        seen.push((pid, now));
        if seen.len() > 4 {
            seen.remove(0);
        }
        Ok(())
    }

    /// Polls each second into `plane`'s traffic until `stop`.
    pub fn spawn(self: Arc<Self>, plane: Arc<Plane>, stop: CancellationToken) {
        if self.plane.set(plane).is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match self.poll().await {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(error = %e, "HAProxy's counters cannot be read: its traffic is not counted until they can");
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
    }
}

/// Adds what each side's backend answered between `before` and `now`.
fn count(
    plane: &Plane,
    cfg: &HaproxyConfig,
    before: &BTreeMap<String, BackendStat>,
    now: &BTreeMap<String, BackendStat>,
) {
    let snap = plane.snapshot.load();
    for side in Side::ALL {
        let Some(n) = now.get(&cfg.backend_of(side)) else {
            continue;
        };
        let b = before
            .get(&cfg.backend_of(side))
            .copied()
            .unwrap_or_default();
        let stats = &snap.pools[side].live_stats;
        let latency = Duration::from_millis(n.rtime_ms);
        for (class, delta) in deltas(&b, n).into_iter().enumerate() {
            stats.record_many(class as u16 * 100, latency, delta);
        }
    }
}

/// New answers per status class, the same process's counters before and
/// now (a counter cleared by `clear counters` counts from 0).
fn deltas(before: &BackendStat, now: &BackendStat) -> [u64; 6] {
    let cleared = (1..6).any(|k| now.classes[k] < before.classes[k]);
    std::array::from_fn(|k| match k {
        0 => 0,
        _ if cleared => now.classes[k],
        _ => now.classes[k] - before.classes[k],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_answers_are_the_growth_and_a_restart_counts_from_zero() {
        let at = |c: [u64; 6]| BackendStat {
            classes: c,
            rtime_ms: 5,
        };
        assert_eq!(
            deltas(&at([0, 0, 10, 0, 2, 1]), &at([0, 0, 15, 0, 2, 4])),
            [0, 0, 5, 0, 0, 3]
        );
        // Cleared: counted from 0.
        assert_eq!(
            deltas(&at([0, 0, 100, 0, 2, 1]), &at([0, 0, 7, 0, 0, 1])),
            [0, 0, 7, 0, 0, 1]
        );
    }
}
