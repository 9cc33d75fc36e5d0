//! What people and systems are told: the events that matter to them
//! (a switch, a rollback, how a deploy ended, maintenance, certificates),
//! picked from the event stream and given a kind, a sentence and facts.

use crate::events::Event;
use bluegreen_core::deploy::{DeployRecord, Outcome, StepState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One notice, as it waits in the outbox and goes to every hook that asks
/// for its kind. Its `id` stays the same across retries: a receiver
/// de-duplicates by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub id: String,
    /// One of `config::notify::KINDS`.
    pub kind: String,
    pub at_unix_ms: u64,
    /// The deploy it is about (`deploy #7`), when it is about one.
    pub subject: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The facts, for systems.
    pub data: serde_json::Value,
}

/// A notice before it has an id.
#[derive(Debug, Clone)]
pub struct Draft {
    pub kind: &'static str,
    pub subject: Option<String>,
    pub summary: String,
    pub data: serde_json::Value,
    /// A key that makes the id the same when the notice is made again
    /// (a restarted process sees a running deploy anew).
    pub key: Option<String>,
    /// When the event happened, when it says (a switch's record, a
    /// deploy's start and end): the same on every node.
    pub at: Option<u64>,
}

fn draft(
    kind: &'static str,
    subject: Option<String>,
    summary: String,
    data: serde_json::Value,
) -> Draft {
    Draft {
        kind,
        subject,
        summary,
        data,
        key: None,
        at: None,
    }
}

/// Remembers what was already said of each deploy (a deploy record is
/// announced at every step).
#[derive(Default)]
pub struct Said {
    started: BTreeSet<u64>,
    ended: BTreeSet<u64>,
}

impl Said {
    /// The notices `event` makes.
    pub fn drafts(&mut self, event: &Event) -> Vec<Draft> {
        match event {
            Event::Switch(s) => {
                let kind = if s.kind == "rollback" {
                    "rolled_back"
                } else {
                    "switched"
                };
                let why = if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.reason)
                };
                vec![Draft {
                    // The generation is the state's: the same on every node.
                    key: Some(format!("switch-{}-{}", s.generation, s.at_unix_ms)),
                    at: Some(s.at_unix_ms),
                    ..draft(
                        kind,
                        None,
                        format!(
                            "{} is live (was {}), {} by {}{why}",
                            s.to,
                            s.from,
                            if kind == "rolled_back" {
                                "rolled back"
                            } else {
                                "switched"
                            },
                            s.actor
                        ),
                        serde_json::json!({
                            "from": s.from, "to": s.to, "generation": s.generation,
                            "actor": s.actor, "reason": s.reason, "forced": s.forced,
                        }),
                    )
                }]
            }
            Event::Deploy(d) => self.deploy(d),
            Event::Maintenance {
                on,
                detail,
                since_ms,
            } => {
                let kind = if *on {
                    "maintenance_on"
                } else {
                    "maintenance_off"
                };
                vec![Draft {
                    key: since_ms.map(|t| format!("{kind}-{t}")),
                    ..draft(
                        kind,
                        None,
                        detail.clone(),
                        serde_json::json!({ "on": on, "detail": detail, "since_ms": since_ms }),
                    )
                }]
            }
            Event::Tls { ok, detail } => vec![draft(
                if *ok {
                    "certificate_renewed"
                } else {
                    "certificate_failing"
                },
                None,
                detail.clone(),
                serde_json::json!({ "ok": ok, "detail": detail }),
            )],
            Event::Migration {
                phase,
                deploy_id,
                version,
                ok,
                detail,
            } => {
                let kind = if *ok {
                    "migration_applied"
                } else {
                    "migration_failed"
                };
                vec![Draft {
                    // A resumed deploy running its expand again (nothing
                    // left to apply) is not told twice.
                    key: Some(format!("migration-{deploy_id}-{phase}-{kind}")),
                    ..draft(
                        kind,
                        Some(format!("deploy #{deploy_id}")),
                        format!("{phase} migrations of {version} (deploy #{deploy_id}): {detail}"),
                        event.data(),
                    )
                }]
            }
            _ => Vec::new(),
        }
    }

    fn deploy(&mut self, d: &DeployRecord) -> Vec<Draft> {
        let mut out = Vec::new();
        let subject = Some(format!("deploy #{}", d.id));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let facts = || {
            let failed = d
                .steps
                .iter()
                .find(|s| s.state == StepState::Failed)
                .map(|s| serde_json::json!({ "step": s.step, "detail": s.detail }));
            serde_json::json!({
                "deploy_id": d.id,
                "version": d.version,
                "previous_version": d.previous_version,
                "target": d.target,
                "from": d.from,
                "outcome": d.outcome,
                "reason": d.reason,
                "actor": d.options.actor,
                "failed_step": failed,
                "breach": d.breach,
                "started_at_ms": d.created_at_ms,
                "finished_at_ms": d.finished_at_ms,
                // The doubled-infrastructure time (planned in all when a
                // stop is scheduled), to tune `deploy.keep_warm` against.
                "side_by_side": d.side_by_side,
                "side_by_side_secs": d.side_by_side.as_ref().map(|s| s.ms(now, true) / 1000),
            })
        };
        if self.started.insert(d.id) && d.outcome == Outcome::Running {
            out.push(Draft {
                key: Some(format!("deploy-{}-{}-started", d.id, d.created_at_ms)),
                at: Some(d.created_at_ms),
                ..draft(
                    "deploy_started",
                    subject.clone(),
                    format!(
                        "deploy #{} of {} to {} started by {}",
                        d.id, d.version, d.target, d.options.actor
                    ),
                    facts(),
                )
            });
        }
        let ended = match d.outcome {
            Outcome::Running => None,
            Outcome::Succeeded => Some(("deploy_succeeded", "succeeded")),
            Outcome::RolledBack => Some(("deploy_rolled_back", "was ROLLED BACK")),
            Outcome::Aborted => Some(("deploy_aborted", "was aborted")),
            Outcome::Failed => Some(("deploy_failed", "FAILED")),
        };
        if let Some((kind, verb)) = ended {
            if self.ended.insert(d.id) {
                let why = d
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let both = d
                    .side_by_side
                    .as_ref()
                    .map(|s| format!("; {}", s.sentence(now)))
                    .unwrap_or_default();
                out.push(Draft {
                    key: Some(format!("deploy-{}-{}-ended", d.id, d.created_at_ms)),
                    at: d.finished_at_ms,
                    ..draft(
                        kind,
                        subject,
                        format!(
                            "deploy #{} of {} to {} {verb}{why}{both}",
                            d.id, d.version, d.target
                        ),
                        facts(),
                    )
                });
            }
        }
        // Bounded: the oldest deploys are forgotten.
        for set in [&mut self.started, &mut self.ended] {
            while set.len() > 1000 {
                set.pop_first();
            }
        }
        out
    }
}

/// A node of the cluster stopped reporting (seen by the node that
/// delivers, once it stayed away longer than the lease).
pub fn node_lost(node: &str, last_seen_ms: u64, away: std::time::Duration, now_ms: u64) -> Draft {
    Draft {
        key: Some(format!("node-lost-{node}-{now_ms}")),
        ..draft(
            "node_lost",
            None,
            format!(
                "router node {node} is LOST: no report for at least {} s (it serves the last state it applied, or is down); `bluegreen cluster-forget {node}` once it is gone for good",
                away.as_secs()
            ),
            serde_json::json!({ "node": node, "last_seen_ms": last_seen_ms, "away_secs": away.as_secs() }),
        )
    }
}
