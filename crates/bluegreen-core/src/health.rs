//! Consecutive-result health counter: plain data, no I/O.
//!
//! An upstream flips to healthy after `rise` consecutive successes and to
//! unhealthy after `fall` consecutive failures. The first result decides an
//! upstream whose health is still unknown, so a fresh router does not wait
//! `rise` intervals before it can route or switch.

use serde::{Deserialize, Serialize};

/// What the router believes about one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has finished yet.
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Encoding for an `AtomicU8`, so the request path reads health lock-free.
    pub fn to_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        }
    }

    /// Inverse of [`Health::to_u8`]; unknown codes read as `Unknown`.
    pub fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }
}

/// Counts consecutive check results and says when health flips.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    state: Health,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl HealthCounter {
    /// A counter in the `Unknown` state. `rise` and `fall` are at least 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthCounter {
            state: Health::Unknown,
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// New thresholds; the state and the current run of results stay.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Consecutive failures that mark an upstream down (checks, or requests
    /// it took and did not answer).
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Current belief.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one active check result. Returns the new state if it flipped.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match self.state {
            Health::Unknown if ok => Health::Healthy,
            Health::Unknown => Health::Unhealthy,
            Health::Healthy if self.failures >= self.fall => Health::Unhealthy,
            Health::Unhealthy if self.successes >= self.rise => Health::Healthy,
            s => s,
        };
        self.flip_to(next)
    }

    /// Passive marking: a real request could not connect. Marks the upstream
    /// unhealthy at once; it must then pass `rise` active checks to return.
    pub fn mark_down(&mut self) -> Option<Health> {
        self.successes = 0;
        self.failures = self.failures.max(self.fall);
        self.flip_to(Health::Unhealthy)
    }

    fn flip_to(&mut self, next: Health) -> Option<Health> {
        if next == self.state {
            return None;
        }
        self.state = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_unknown() {
        let mut c = HealthCounter::new(2, 3);
        assert_eq!(c.record(true), Some(Health::Healthy));
        let mut c = HealthCounter::new(2, 3);
        assert_eq!(c.record(false), Some(Health::Unhealthy));
    }

    #[test]
    fn flips_only_after_thresholds() {
        let mut c = HealthCounter::new(2, 3);
        c.record(true);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None, "a success resets the failure run");
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(Health::Unhealthy));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(Health::Healthy));
    }

    #[test]
    fn passive_mark_down_needs_rise_to_return() {
        let mut c = HealthCounter::new(3, 2);
        c.record(true);
        assert_eq!(c.mark_down(), Some(Health::Unhealthy));
        assert_eq!(c.mark_down(), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(Health::Healthy));
    }

    #[test]
    fn health_round_trips_through_u8() {
        for h in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
            assert_eq!(Health::from_u8(h.to_u8()), h);
        }
    }
}
