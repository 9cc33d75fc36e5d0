//! The deploy record: one release's steps, their states and durations, and
//! how it ended. Plain data with small transitions; the pipeline persists it
//! before and after every step.

use crate::bake::{Breach, Window};
use crate::side::{Side, Sides};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The steps of a blue-green release, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Apply the expand migrations (additive only), then check that the
    /// live (old) version still passes its smoke tests on that schema.
    Expand,
    /// Put the version on the idle side (hook or supervisor).
    Deploy,
    /// Wait until every idle upstream is healthy.
    Health,
    /// Smoke tests through the preview listener.
    Smoke,
    /// Replay recorded traffic to the idle side, to warm its caches.
    Warm,
    /// Mirror live traffic to the idle side and judge the differences.
    Shadow,
    /// Automatic, or wait for `promote`.
    Gate,
    /// With `--canary`: growing shares of the clients on the new side, each
    /// judged against the old side's traffic of the same minutes.
    Canary,
    /// The router's atomic switch.
    Switch,
    /// Watch error rate and latency; roll back on a breach.
    Bake,
    /// Stop the old side (or keep it warm for a while).
    Decommission,
}

impl Step {
    /// Every step in order.
    pub const ALL: [Step; 11] = [
        Step::Expand,
        Step::Deploy,
        Step::Health,
        Step::Smoke,
        Step::Warm,
        Step::Shadow,
        Step::Gate,
        Step::Canary,
        Step::Switch,
        Step::Bake,
        Step::Decommission,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Expand => "expand",
            Step::Deploy => "deploy",
            Step::Health => "health",
            Step::Smoke => "smoke",
            Step::Warm => "warm",
            Step::Shadow => "shadow",
            Step::Gate => "gate",
            Step::Canary => "canary",
            Step::Switch => "switch",
            Step::Bake => "bake",
            Step::Decommission => "decommission",
        }
    }

    /// True for steps after which the new version has taken live traffic.
    pub fn after_switch(self) -> bool {
        matches!(self, Step::Bake | Step::Decommission)
    }
}

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

/// One step of one deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub state: StepState,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// What happened, for humans (why it failed, what was skipped, verdicts).
    pub detail: Option<String>,
}

impl StepRecord {
    /// Duration once finished (none for a skipped step: it did not run).
    pub fn duration_ms(&self) -> Option<u64> {
        if self.state == StepState::Skipped {
            return None;
        }
        Some(self.finished_at_ms?.saturating_sub(self.started_at_ms?))
    }
}

/// How a deploy ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    Succeeded,
    /// The bake (or an abort after the switch) put traffic back on the old side.
    RolledBack,
    /// Stopped by `abort`; the live side is what it was before.
    Aborted,
    /// A step before the switch failed; the live side was never touched.
    Failed,
}

/// What asked for the deploy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployOptions {
    pub manual_promote: bool,
    pub skip_smoke: bool,
    /// Skip the shadow step (when the config has one).
    #[serde(default)]
    pub skip_shadow: bool,
    /// Extra environment for the hook or the app processes.
    pub env: BTreeMap<String, String>,
    pub actor: String,
    /// Why; `rollback` re-deploys say so here.
    pub reason: String,
    /// Canary shares in basis points (`--canary 1,10,50` is 100, 1000,
    /// 5000), growing; empty for a direct switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<u16>,
    /// How long each canary share runs, in milliseconds.
    #[serde(default)]
    pub canary_step_ms: u64,
    /// A bake or canary share with too little traffic to judge passes
    /// anyway (`--accept-inconclusive`), said so in the record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_inconclusive: bool,
}

/// One line of a deploy's log (hook output, decisions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at_ms: u64,
    pub text: String,
}

/// Lines kept per deploy; older ones are dropped first.
pub const LOG_LIMIT: usize = 500;

/// One release, from request to result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub id: u64,
    pub version: String,
    /// The side the version goes to (idle when the deploy started).
    pub target: Side,
    /// The side live when the deploy started; traffic returns here on rollback.
    pub from: Side,
    pub previous_version: Option<String>,
    pub options: DeployOptions,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub steps: Vec<StepRecord>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// The old side's live traffic during the deploy, measured up to the switch.
    pub baseline: Option<Window>,
    /// How much more the old side's error rate wandered over the kept
    /// stretch before the switch than a steady rate's
    /// (`counts::dispersion`, in bake-window slices): the bake's test
    /// against the baseline asks for that much more evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_dispersion: Option<f64>,
    pub breach: Option<Breach>,
    pub log: Vec<LogLine>,
    /// The contract files this release brings, as its expand step saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationMark>,
    /// The new side's live traffic (every node's) when the bake began: a
    /// bake resumed on another node, or after a restart, judges all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_start: Option<Window>,
    /// Why the deploy waits for `bluegreen promote` outside the gate (a
    /// bake or canary share with too little traffic, `on_inconclusive =
    /// "hold"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The judgment's last table (router counters, the app's resources,
    /// `[[deploy.analysis]]`): metric, new, baseline, limit, verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<crate::analysis::Reading>,
    /// The node whose watchdog rolled the bake back while the deploy
    /// lock's holder was gone (the breach it saw is in `breach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<String>,
    /// How long both environments ran at once for this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_by_side: Option<SideBySide>,
}

/// Both environments up at once for a release: from its deploy step (the
/// new version starting next to the live one) until one side was stopped
/// or taken over. The doubled-infrastructure cost that `deploy.keep_warm`
/// (and `keep_failed`) trade against an instant rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideBySide {
    pub since_ms: u64,
    /// When it ended; `None` while both run.
    pub until_ms: Option<u64>,
    /// While both run: when a scheduled stop (`keep_warm`, `keep_failed`)
    /// will end it; `None` when no stop is planned.
    pub planned_until_ms: Option<u64>,
    /// How it ended, or why both still run.
    pub detail: String,
}

impl SideBySide {
    /// Ends it at `until` (or, with `None`, leaves it open with no stop
    /// planned), saying how; a time already ended stays as it was.
    pub fn settle(&mut self, until: Option<u64>, detail: String) {
        if self.until_ms.is_none() {
            self.until_ms = until;
            self.planned_until_ms = None;
            self.detail = detail;
        }
    }

    /// The time both ran, up to `now` while they still do (or up to the
    /// planned stop when `planned` is asked for).
    pub fn ms(&self, now_ms: u64, planned: bool) -> u64 {
        let end = self
            .until_ms
            .or(self.planned_until_ms.filter(|_| planned))
            .unwrap_or(now_ms);
        end.saturating_sub(self.since_ms)
    }

    /// For people: how long, and whether it is over.
    pub fn sentence(&self, now_ms: u64) -> String {
        let d = |ms: u64| humantime::format_duration(std::time::Duration::from_secs(ms / 1000));
        match (self.until_ms, self.planned_until_ms) {
            (Some(_), _) => format!(
                "both environments ran side by side for {} ({})",
                d(self.ms(now_ms, false)),
                self.detail
            ),
            (None, Some(_)) => format!(
                "both environments run side by side for {} in all ({})",
                d(self.ms(now_ms, true)),
                self.detail
            ),
            (None, None) => format!(
                "both environments up for {} so far ({})",
                d(self.ms(now_ms, false)),
                self.detail
            ),
        }
    }
}

/// What a deploy's expand step saw of the migrations directory: the
/// contract files that belong to this release (a file added for a later
/// release is not run at this one's contract).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationMark {
    pub contract: Vec<FileMark>,
}

/// A migration file and the checksum it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    pub file: String,
    pub checksum: String,
}

/// The last contract that ran. Releases deployed before it expect a schema
/// that is gone, so rollback to them is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contracted {
    /// The deploy whose release the contract belongs to.
    pub deploy_id: u64,
    pub version: String,
    pub files: Vec<String>,
    pub at_ms: u64,
}

impl DeployRecord {
    /// A new deploy with every step pending (smoke skipped when asked).
    pub fn new(
        id: u64,
        version: String,
        from: Side,
        previous_version: Option<String>,
        options: DeployOptions,
        now_ms: u64,
    ) -> DeployRecord {
        let skip_smoke = options.skip_smoke;
        let mut record = DeployRecord {
            id,
            version,
            target: from.other(),
            from,
            previous_version,
            options,
            created_at_ms: now_ms,
            finished_at_ms: None,
            steps: Step::ALL
                .iter()
                .map(|&step| StepRecord {
                    step,
                    state: StepState::Pending,
                    started_at_ms: None,
                    finished_at_ms: None,
                    detail: None,
                })
                .collect(),
            outcome: Outcome::Running,
            reason: None,
            baseline: None,
            baseline_dispersion: None,
            breach: None,
            log: Vec::new(),
            migrations: None,
            bake_start: None,
            held: None,
            report: Vec::new(),
            rolled_back_by: None,
            side_by_side: None,
        };
        if skip_smoke {
            record.skip(Step::Smoke, "skipped by --skip-smoke", now_ms);
        }
        if record.options.skip_shadow {
            record.skip(Step::Shadow, "skipped by --skip-shadow", now_ms);
        }
        if record.options.canary.is_empty() {
            record.skip(Step::Canary, "no --canary: a direct switch", now_ms);
        }
        record
    }

    /// Brings a record written by an older version up to today's step
    /// list: steps it did not know are added in their place, as skipped when
    /// the record had already moved past them.
    pub fn normalize(&mut self) {
        if self.steps.len() == Step::ALL.len()
            && self.steps.iter().zip(Step::ALL).all(|(s, x)| s.step == x)
        {
            return;
        }
        let mut old = std::mem::take(&mut self.steps);
        let mut past = false;
        for &step in Step::ALL.iter().rev() {
            let rec = match old.iter().position(|s| s.step == step) {
                Some(i) => {
                    let r = old.remove(i);
                    past |= r.state != StepState::Pending;
                    r
                }
                None => StepRecord {
                    step,
                    state: if past {
                        StepState::Skipped
                    } else {
                        StepState::Pending
                    },
                    started_at_ms: None,
                    finished_at_ms: None,
                    detail: past.then(|| "not part of the pipeline when this deploy ran".into()),
                },
            };
            self.steps.push(rec);
        }
        self.steps.reverse();
    }

    /// The record of `step`.
    pub fn step(&self, step: Step) -> &StepRecord {
        self.steps
            .iter()
            .find(|s| s.step == step)
            .expect("normalized records have every step")
    }

    fn step_mut(&mut self, step: Step) -> &mut StepRecord {
        self.steps
            .iter_mut()
            .find(|s| s.step == step)
            .expect("normalized records have every step")
    }

    /// The first step that is neither done nor skipped; `None` when all are.
    pub fn next_step(&self) -> Option<Step> {
        self.steps
            .iter()
            .find(|s| !matches!(s.state, StepState::Done | StepState::Skipped))
            .map(|s| s.step)
    }

    /// True once the deploy has an outcome other than running.
    pub fn is_finished(&self) -> bool {
        self.outcome != Outcome::Running
    }

    /// Marks a step as running. Resumed after a crash or a handover to a
    /// new process, it keeps its first start: a bake ends when it would
    /// have, and the history shows the step's whole span.
    pub fn start(&mut self, step: Step, now_ms: u64) {
        let s = self.step_mut(step);
        if s.state != StepState::Running || s.started_at_ms.is_none() {
            s.started_at_ms = Some(now_ms);
        }
        s.state = StepState::Running;
        s.finished_at_ms = None;
    }

    /// Marks a step as done, with an optional detail.
    pub fn finish(&mut self, step: Step, detail: Option<String>, now_ms: u64) {
        let s = self.step_mut(step);
        s.state = StepState::Done;
        s.finished_at_ms = Some(now_ms);
        if detail.is_some() {
            s.detail = detail;
        }
    }

    /// Marks a step as skipped, saying why.
    pub fn skip(&mut self, step: Step, why: &str, now_ms: u64) {
        let s = self.step_mut(step);
        // A step skipped before it began takes no time, but has a start.
        s.started_at_ms.get_or_insert(now_ms);
        s.state = StepState::Skipped;
        s.finished_at_ms = Some(now_ms);
        s.detail = Some(why.to_string());
    }

    /// Sets a step's detail without changing its state.
    pub fn note(&mut self, step: Step, detail: String) {
        self.step_mut(step).detail = Some(detail);
    }

    /// Ends the deploy: `step` failed (if given) and the outcome is set.
    pub fn end(&mut self, step: Option<Step>, outcome: Outcome, reason: String, now_ms: u64) {
        if let Some(step) = step {
            let s = self.step_mut(step);
            s.state = StepState::Failed;
            s.finished_at_ms = Some(now_ms);
            s.detail = Some(reason.clone());
        }
        self.outcome = outcome;
        self.reason = Some(reason);
        self.finished_at_ms = Some(now_ms);
    }

    /// Marks the deploy as succeeded.
    pub fn succeed(&mut self, now_ms: u64) {
        self.outcome = Outcome::Succeeded;
        self.finished_at_ms = Some(now_ms);
    }

    /// Appends to the log, dropping the oldest lines past [`LOG_LIMIT`].
    pub fn log(&mut self, text: impl Into<String>, now_ms: u64) {
        if self.log.len() >= LOG_LIMIT {
            self.log.remove(0);
        }
        self.log.push(LogLine {
            at_ms: now_ms,
            text: text.into(),
        });
    }
}

/// What each side runs, as far as the pipeline knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideRelease {
    pub version: Option<String>,
    /// False once decommissioned: a rollback to it must re-deploy.
    pub running: bool,
}

/// A decommission waiting for the keep-warm time to pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDecommission {
    pub side: Side,
    pub deploy_id: u64,
    pub at_ms: u64,
}

/// Deploy history kept.
pub const DEPLOY_HISTORY_LIMIT: usize = 200;

/// Everything the pipeline persists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployBook {
    pub next_id: u64,
    /// The deploy in progress, if any: the lock.
    pub current: Option<DeployRecord>,
    /// Finished deploys, oldest first.
    pub history: Vec<DeployRecord>,
    pub sides: Sides<SideRelease>,
    pub pending_decommission: Option<PendingDecommission>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contracted: Option<Contracted>,
}

impl DeployBook {
    /// Moves a finished current deploy into the history.
    pub fn archive_current(&mut self) {
        if let Some(d) = self.current.take() {
            if self.history.len() >= DEPLOY_HISTORY_LIMIT {
                self.history.remove(0);
            }
            self.history.push(d);
        }
    }

    /// Ends (or re-opens, with `until` `None`) the side-by-side time of
    /// deploy `id`: its planned stop happened, was called off, or its side
    /// was taken over.
    pub fn settle_side_by_side(&mut self, id: u64, until: Option<u64>, detail: String) {
        let found = self
            .current
            .iter_mut()
            .chain(self.history.iter_mut().rev())
            .find(|d| d.id == id);
        if let Some(s) = found.and_then(|d| d.side_by_side.as_mut()) {
            s.settle(until, detail);
        }
    }

    /// A deploy by id, current or past.
    pub fn find(&self, id: u64) -> Option<&DeployRecord> {
        self.current
            .iter()
            .chain(self.history.iter().rev())
            .find(|d| d.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DeployRecord {
        DeployRecord::new(
            1,
            "v2".into(),
            Side::Blue,
            Some("v1".into()),
            DeployOptions::default(),
            10,
        )
    }

    #[test]
    fn a_resumed_step_keeps_its_first_start() {
        let mut d = record();
        d.start(Step::Bake, 1_000);
        // A crash or a handover, then the new process resumes the step.
        d.start(Step::Bake, 5_000);
        let bake = d.steps.iter().find(|s| s.step == Step::Bake).unwrap();
        assert_eq!(bake.started_at_ms, Some(1_000));
        d.finish(Step::Bake, None, 9_000);
        d.start(Step::Deploy, 10_000);
        let deploy = d.steps.iter().find(|s| s.step == Step::Deploy).unwrap();
        assert_eq!(deploy.started_at_ms, Some(10_000));
    }

    #[test]
    fn records_from_before_the_warm_and_shadow_steps_are_normalized() {
        let mut d = record();
        d.steps
            .retain(|s| !matches!(s.step, Step::Expand | Step::Warm | Step::Shadow));
        d.steps[0].state = StepState::Done; // deploy
        d.steps[1].state = StepState::Done; // health
        d.steps[2].state = StepState::Done; // smoke
        d.steps[3].state = StepState::Running; // gate
        d.normalize();
        let names: Vec<Step> = d.steps.iter().map(|s| s.step).collect();
        assert_eq!(names, Step::ALL.to_vec());
        assert_eq!(d.step(Step::Warm).state, StepState::Skipped);
        assert_eq!(d.step(Step::Shadow).state, StepState::Skipped);
        assert_eq!(d.step(Step::Expand).state, StepState::Skipped);
        assert_eq!(d.next_step(), Some(Step::Gate));
    }

    #[test]
    fn new_deploy_targets_the_idle_side_with_all_steps_pending() {
        let d = record();
        assert_eq!(d.target, Side::Green);
        assert_eq!(d.next_step(), Some(Step::Expand));
        // All pending but the canary, skipped without --canary.
        assert!(d
            .steps
            .iter()
            .all(|s| s.state == StepState::Pending || s.step == Step::Canary));
        assert_eq!(d.step(Step::Canary).state, StepState::Skipped);
        let canary = DeployRecord::new(
            2,
            "v3".into(),
            Side::Blue,
            None,
            DeployOptions {
                canary: vec![100, 1000],
                canary_step_ms: 1000,
                ..DeployOptions::default()
            },
            10,
        );
        assert_eq!(canary.step(Step::Canary).state, StepState::Pending);
        assert!(!d.is_finished());
    }

    #[test]
    fn steps_advance_and_record_durations() {
        let mut d = record();
        d.skip(Step::Expand, "no [deploy.migrations]", 50);
        assert_eq!(d.step(Step::Expand).duration_ms(), None);
        d.start(Step::Deploy, 100);
        assert_eq!(d.next_step(), Some(Step::Deploy), "running is not done");
        d.finish(Step::Deploy, None, 250);
        assert_eq!(d.step(Step::Deploy).duration_ms(), Some(150));
        assert_eq!(d.next_step(), Some(Step::Health));
    }

    #[test]
    fn skip_smoke_is_recorded() {
        let d = DeployRecord::new(
            1,
            "v2".into(),
            Side::Green,
            None,
            DeployOptions {
                skip_smoke: true,
                ..Default::default()
            },
            0,
        );
        assert_eq!(d.step(Step::Smoke).state, StepState::Skipped);
        assert!(d
            .step(Step::Smoke)
            .detail
            .as_deref()
            .unwrap()
            .contains("--skip-smoke"));
    }

    #[test]
    fn failure_ends_the_deploy_with_reason() {
        let mut d = record();
        d.start(Step::Health, 5);
        d.end(Some(Step::Health), Outcome::Failed, "timed out".into(), 9);
        assert_eq!(d.outcome, Outcome::Failed);
        assert_eq!(d.step(Step::Health).state, StepState::Failed);
        assert_eq!(d.reason.as_deref(), Some("timed out"));
        assert!(d.is_finished());
    }

    #[test]
    fn log_and_history_are_bounded() {
        let mut d = record();
        for i in 0..(LOG_LIMIT + 3) {
            d.log(format!("line {i}"), 0);
        }
        assert_eq!(d.log.len(), LOG_LIMIT);
        assert_eq!(d.log[0].text, "line 3");
        let mut book = DeployBook::default();
        for i in 0..(DEPLOY_HISTORY_LIMIT as u64 + 2) {
            let mut r = record();
            r.id = i;
            book.current = Some(r);
            book.archive_current();
        }
        assert_eq!(book.history.len(), DEPLOY_HISTORY_LIMIT);
        assert!(book.find(DEPLOY_HISTORY_LIMIT as u64 + 1).is_some());
        assert!(book.find(0).is_none());
    }
}
