//! The outbox: every notice waiting for a hook, in the state store (key
//! `notify`), written before delivery starts and after each delivery, so a
//! `kill -9` or an upgrade loses nothing written (what was delivered but
//! not yet written off is delivered again: receivers de-duplicate by id).

use super::notice::Notice;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The store key.
pub const KEY: &str = "notify";

/// One notice waiting for one hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub hook: String,
    pub notice: Notice,
    pub attempts: u32,
    /// Not tried again before this.
    pub next_at_ms: u64,
    pub last_error: Option<String>,
}

/// How many ids taken in lately an outbox remembers.
const SEEN: usize = 1000;

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// Oldest first; each hook's in the order they happened.
    pub pending: Vec<Pending>,
    /// The ids of the last `SEEN` notices taken in (oldest first): one said
    /// again (by a restarted process, by every node of a cluster) is not
    /// queued twice.
    #[serde(default)]
    pub seen: std::collections::VecDeque<String>,
    /// Cluster nodes told lost and not back since (told once per absence).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub told_lost: std::collections::BTreeSet<String>,
}

impl Outbox {
    /// The first waiting notice of each hook (a hook gets its notices in
    /// order: a later one waits for the one before).
    pub fn heads(&self) -> Vec<usize> {
        let mut seen = std::collections::BTreeSet::new();
        self.pending
            .iter()
            .enumerate()
            .filter(|(_, p)| seen.insert(p.hook.clone()))
            .map(|(i, _)| i)
            .collect()
    }

    /// Remembers `id`; false when it was taken in already.
    pub fn remember(&mut self, id: &str) -> bool {
        if self.seen.iter().any(|s| s == id) {
            return false;
        }
        self.seen.push_back(id.to_string());
        while self.seen.len() > SEEN {
            self.seen.pop_front();
        }
        true
    }

    /// How many wait for `hook`.
    pub fn waiting(&self, hook: &str) -> usize {
        self.pending.iter().filter(|p| p.hook == hook).count()
    }
}

/// The wait before attempt `attempts + 1`: 1 s doubled each time, at most
/// 5 minutes, with up to a fifth more at random so that many waiting
/// deliveries do not all come back at once.
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(Duration::from_secs(300));
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(hook: &str, n: u64) -> Pending {
        Pending {
            hook: hook.into(),
            notice: Notice {
                id: format!("n-{n}"),
                kind: "switched".into(),
                at_unix_ms: n,
                subject: None,
                summary: String::new(),
                data: serde_json::Value::Null,
            },
            attempts: 0,
            next_at_ms: 0,
            last_error: None,
        }
    }

    #[test]
    fn each_hook_gets_its_oldest_first() {
        let o = Outbox {
            pending: vec![p("a", 1), p("b", 2), p("a", 3), p("c", 4)],
            ..Default::default()
        };
        assert_eq!(o.heads(), vec![0, 1, 3]);
        assert_eq!(o.waiting("a"), 2);
    }

    #[test]
    fn an_id_is_taken_in_once_and_the_oldest_are_forgotten() {
        let mut o = Outbox::default();
        assert!(o.remember("a"));
        assert!(!o.remember("a"));
        for i in 0..SEEN {
            assert!(o.remember(&i.to_string()));
        }
        assert_eq!(o.seen.len(), SEEN);
        assert!(o.remember("a"), "forgotten after {SEEN} newer ones");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes_with_a_fifth_of_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(300));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(1200));
    }
}
