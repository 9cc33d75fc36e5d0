//! Executes a deploy's steps in order (the loop is here, one file per step,
//! numbered as in README.md: 0 `expand` (migrations), 1 `deploy`, 2–3 `checks` (health, smoke),
//! 4 `warm`, 5 `shadow`, 6–7 `switch` (gate, switch), 8 `bake`,
//! 9 `decommission`; `hook` runs commands for them). Each step is persisted
//! as running before it starts and as done (or failed) after; after a crash
//! the runner re-runs the step that was running, and every step is written
//! so that running it twice is safe.

use crate::error::StepError;
use crate::{command, now_ms, smoke, Pipeline, PipelineError, RunHandle};
use bluegreen_core::bake::{BakeWindows, Verdict, Window, WindowEnd};
use bluegreen_core::config::deploy::{DeployMethod, SmokeCheck};
use bluegreen_core::deploy::{
    DeployRecord, Outcome, PendingDecommission, SideRelease, Step, StepState,
};
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_router::events::Event;
use bluegreen_router::shadow::ShadowOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod analysis;
mod approval;
mod bake;
mod canary;
mod checks;
pub(crate) mod contract;
mod decommission;
mod deploy;
mod evidence;
mod expand;
#[cfg(test)]
mod fake;
mod hook;
mod shadow;
mod switch;
mod warm;

pub(crate) use decommission::scheduled_decommission;
use hook::HookCall;

/// How a step ended, when it did not simply finish.
#[derive(Debug)]
enum StepEnd {
    Done(Option<String>),
    Skipped(String),
    /// The deploy ends here with this outcome.
    End(Outcome, String),
}

/// Runs the current deploy to its end.
pub(crate) async fn run(p: Arc<Pipeline>, handle: Arc<RunHandle>) {
    loop {
        let Some(record) = p.book.lock().await.current.clone() else {
            return;
        };
        if record.id != handle.id || record.is_finished() {
            return;
        }
        let Some(step) = record.next_step() else {
            finish(&p, Outcome::Succeeded, None).await;
            return;
        };
        let started = update(&p, |d| d.start(step, now_ms())).await;
        let end = match started {
            Err(e) => StepEnd::End(
                Outcome::Failed,
                format!("{e}; {} was not run", step.as_str()),
            ),
            Ok(()) => {
                failpoint(step, "start");
                exec(&p, &handle, &record, step).await
            }
        };
        let recorded = match &end {
            StepEnd::Done(detail) => update(&p, |d| d.finish(step, detail.clone(), now_ms())).await,
            StepEnd::Skipped(why) => update(&p, |d| d.skip(step, why, now_ms())).await,
            StepEnd::End(..) => Ok(()),
        };
        let end = match recorded {
            Ok(()) => end,
            // Once the switch happened, a deploy that cannot be recorded must
            // not stay live unjudged: traffic goes back to the old side.
            Err(e) if step == Step::Switch || step.after_switch() => {
                let why = format!("{e} after {} ended", step.as_str());
                match p.switch_back(&record, SwitchKind::Rollback, &why).await {
                    Ok(_) => StepEnd::End(
                        Outcome::Failed,
                        format!("{why}; traffic is back on {}", record.from),
                    ),
                    Err(s) => StepEnd::End(
                        Outcome::Failed,
                        format!("{why}; switching back failed too: {s}"),
                    ),
                }
            }
            Err(e) => StepEnd::End(
                Outcome::Failed,
                format!("{e} after {} ended", step.as_str()),
            ),
        };
        if let StepEnd::End(outcome, reason) = end {
            tracing::warn!(id = record.id, step = step.as_str(), outcome = crate::outcome_name(outcome), %reason, "deploy ended");
            touch(&p, |d| d.end(Some(step), outcome, reason.clone(), now_ms())).await;
            finish(&p, outcome, Some(reason)).await;
            return;
        }
        failpoint(step, "end");
    }
}

/// Test hook: `BLUEGREEN_CRASH_AT=step:start|end` kills the process with
/// SIGKILL at that point, exactly as `kill -9` would.
fn failpoint(step: Step, point: &str) {
    if let Ok(at) = std::env::var("BLUEGREEN_CRASH_AT") {
        if at == format!("{}:{point}", step.as_str()) {
            eprintln!("BLUEGREEN_CRASH_AT={at}: killing this process");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Applies `f` to the current record and writes the book: resuming after a
/// crash depends on this record, so a failed write is the step's failure.
async fn update(p: &Pipeline, f: impl FnOnce(&mut DeployRecord)) -> Result<(), StepError> {
    let mut book = p.book.lock().await;
    if let Some(d) = book.current.as_mut() {
        f(d);
        announce(p, d);
    }
    p.persist(&book).await.map_err(|source| StepError::Persist {
        what: "could not persist the deploy record",
        source,
    })
}

/// Applies `f` in memory only (log lines, notes): the next durable update writes it.
async fn touch(p: &Pipeline, f: impl FnOnce(&mut DeployRecord)) {
    let mut book = p.book.lock().await;
    if let Some(d) = book.current.as_mut() {
        f(d);
        announce(p, d);
    }
}

/// Both sides up at once for `d`, as its end sees it: from its deploy step
/// (when the old side ran a release: a first deploy doubles nothing) until
/// the old side was stopped, or planned until a scheduled stop (`pending`),
/// or open while both stay up.
fn side_by_side(
    d: &DeployRecord,
    pending: Option<&PendingDecommission>,
    sides: &bluegreen_core::Sides<bluegreen_core::deploy::SideRelease>,
    live: Side,
    now: u64,
) -> Option<bluegreen_core::deploy::SideBySide> {
    let deploy = d.step(Step::Deploy);
    let since = deploy
        .started_at_ms
        .filter(|_| deploy.state != StepState::Pending)?;
    // A first deploy onto an empty cluster: nothing ran on the old side
    // (the decommission step's own test), nothing was doubled.
    let empty = sides[d.from].version.is_none()
        && d.step(Step::Decommission)
            .detail
            .as_deref()
            .is_some_and(|t| t.contains("ran nothing before this deploy"));
    if empty {
        return None;
    }
    // The side that is not live is the one that goes.
    let other = if live == d.target { d.from } else { d.target };
    let (until, planned, detail) = match pending {
        Some(p) if p.side == other => (
            None,
            Some(p.at_ms),
            format!(
                "{other} is kept up until its scheduled stop ({})",
                if other == d.target {
                    "deploy.keep_failed"
                } else {
                    "deploy.keep_warm, or the sessions kept there"
                }
            ),
        ),
        _ if !sides[other].running => {
            let stopped = d.step(Step::Decommission).finished_at_ms.unwrap_or(now);
            (Some(stopped), None, format!("{other} was stopped"))
        }
        _ => (
            None,
            None,
            format!("{other} is left running (no stop is configured or it failed): both stay up"),
        ),
    };
    Some(bluegreen_core::deploy::SideBySide {
        since_ms: since,
        until_ms: until,
        planned_until_ms: planned,
        detail,
    })
}

/// The deploy record as it is now, to whoever follows the event stream
/// (cloned only when someone does).
fn announce(p: &Pipeline, d: &DeployRecord) {
    if p.router.listening() {
        p.router.emit(Event::Deploy(Box::new(d.clone())));
    }
}

async fn log(p: &Pipeline, text: String) {
    tracing::info!(target: "deploy", "{text}");
    touch(p, |d| d.log(text, now_ms())).await;
}

/// Output lines of a hook or a migration, forwarded in order into the
/// deploy's log (with `prefix`) while the work runs.
struct LineLog {
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    forward: tokio::task::JoinHandle<()>,
}

impl LineLog {
    fn start(p: &Arc<Pipeline>, prefix: &'static str) -> LineLog {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let p = p.clone();
        let forward = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                log(&p, format!("{prefix}{line}")).await;
            }
        });
        LineLog { tx, forward }
    }

    /// Where the work sends its lines.
    fn sink(&self) -> impl Fn(String) + '_ {
        |line| {
            let _ = self.tx.send(line);
        }
    }

    /// Waits until every line sent is in the log.
    async fn finish(self) {
        drop(self.tx);
        let _ = self.forward.await;
    }
}

async fn note(p: &Pipeline, step: Step, text: String) {
    touch(p, |d| d.note(step, text)).await;
}

/// Sets the outcome, records what each side runs, archives the deploy.
async fn finish(p: &Arc<Pipeline>, outcome: Outcome, reason: Option<String>) {
    // A canary share left on the target by a deploy that did not succeed
    // goes back to 0 before anything else (the side will be stopped).
    if outcome != Outcome::Succeeded {
        let target = p.book.lock().await.current.as_ref().map(|d| d.target);
        if let (Some(t), Some(split)) = (target, p.router.split()) {
            if split.side == t {
                if let Err(e) = p.router.set_weight(t, 0, true).await {
                    tracing::error!(error = %e, "could not take the canary share back");
                }
            }
        }
    }
    let mut book = p.book.lock().await;
    let (book_pending, book_sides) = (book.pending_decommission.clone(), book.sides.clone());
    let Some(d) = book.current.as_mut() else {
        return;
    };
    if outcome == Outcome::Succeeded {
        d.succeed(now_ms());
    }
    let id = d.id;
    // What failed stays up for a look, then stops: never forever on the idle side.
    // Only when the deploy step began: before it, the target still runs the
    // previous (good) release, which must stay for an instant rollback.
    let replaced = d.step(Step::Deploy).state != StepState::Pending;
    let leftover =
        (outcome != Outcome::Succeeded && replaced && p.router.live() != d.target).then(|| {
            PendingDecommission {
                side: d.target,
                deploy_id: id,
                at_ms: now_ms() + p.config().keep_failed.as_millis() as u64,
            }
        });
    let (pending, sides) = (
        leftover
            .clone()
            .or(book_pending.filter(|p| p.deploy_id == id)),
        book_sides,
    );
    d.side_by_side = side_by_side(d, pending.as_ref(), &sides, p.router.live(), now_ms());
    announce(p, d);
    if let Some(pending) = &leftover {
        d.log(
            format!(
                "{} on {} will be stopped in {}s (keep_failed)",
                d.version,
                d.target,
                p.config().keep_failed.as_secs()
            ),
            now_ms(),
        );
        book.pending_decommission = Some(pending.clone());
    }
    book.archive_current();
    if let Err(e) = p.persist(&book).await {
        tracing::error!(error = %e, "could not persist the finished deploy");
    }
    drop(book);
    if let Some(pending) = leftover {
        p.arm_decommission(pending);
    }
    let mut run = p.run.lock().unwrap_or_else(|x| x.into_inner());
    if run.as_ref().is_some_and(|h| h.id == id) {
        *run = None;
    }
    tracing::info!(
        id,
        outcome = crate::outcome_name(outcome),
        reason = reason.unwrap_or_default(),
        "deploy finished"
    );
}

fn aborted(handle: &RunHandle) -> String {
    let why = handle
        .abort_reason
        .lock()
        .unwrap_or_else(|x| x.into_inner())
        .clone()
        .unwrap_or_else(|| "aborted".into());
    format!("aborted: {why}")
}

async fn exec(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord, step: Step) -> StepEnd {
    if handle.abort.is_cancelled() && !step.after_switch() {
        return StepEnd::End(Outcome::Aborted, aborted(handle));
    }
    match step {
        Step::Expand => expand::expand(p, handle, d).await,
        Step::Deploy => deploy::deploy(p, handle, d).await,
        Step::Health => checks::health(p, handle, d).await,
        Step::Smoke => checks::smoke_tests(p, handle, d).await,
        Step::Warm => warm::warm(p, handle, d).await,
        Step::Shadow => shadow::shadow(p, handle, d).await,
        Step::Gate => switch::gate(p, handle, d).await,
        Step::Canary => canary::canary(p, handle, d).await,
        Step::Switch => switch::switch(p, handle, d).await,
        Step::Bake => bake::bake(p, handle, d).await,
        Step::Decommission => decommission::decommission_step(p, d).await,
    }
}
