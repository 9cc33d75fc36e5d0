//! The contract migrations (the destructive part) of a release: run once
//! rollback to the version before is no longer possible, that is, once the
//! old side was stopped after the bake and `keep_warm`; or by hand with
//! `bluegreen migrate contract`. From the moment one may have run, rollback
//! (and a switch) to a release from before is refused
//! (`rollback::past_contract`).

use super::*;
use crate::migrate;
use bluegreen_core::config::migrations::MigrationRunner;
use bluegreen_core::deploy::Contracted;

/// After the old side of deploy `id` was stopped: its release's contract
/// files, if it is still the live release. The line for the deploy log.
pub(crate) async fn after_decommission(p: &Arc<Pipeline>, id: u64) -> Option<String> {
    p.config().migrations.as_ref()?;
    let version = {
        let book = p.book.lock().await;
        let d = book.find(id)?;
        if d.is_finished() && d.outcome != Outcome::Succeeded {
            return None;
        }
        d.version.clone()
    };
    Some(match contract_release(p, id, "pipeline".into(), false).await {
        Ok(line) => line,
        Err(e) => format!("contract failed: {e}; {version} stays live; fix it and run `bluegreen migrate contract`"),
    })
}

/// `bluegreen migrate contract`: the live release's contract files, now.
pub(crate) async fn by_hand(
    p: &Arc<Pipeline>,
    force: bool,
    actor: String,
) -> Result<String, PipelineError> {
    if p.config().migrations.is_none() {
        return Err(PipelineError::BadInput(
            "no [deploy.migrations] in the config".into(),
        ));
    }
    // In a cluster, the book as the store has it (as switch and rollback do).
    if let Some(fresh) = p.fresh_book().await? {
        let _fence = p.fence.lock().await;
        *p.book.lock().await = fresh;
    }
    let live = p.router.live();
    let id =
        {
            let book = p.book.lock().await;
            let Some(version) = book.sides[live].version.clone() else {
                return Err(PipelineError::Stopped(format!(
                    "no release recorded on {live}: nothing to contract for"
                )));
            };
            let Some(d) = book.history.iter().rev().find(|d| {
                d.version == version && d.target == live && d.outcome == Outcome::Succeeded
            }) else {
                return Err(PipelineError::Stopped(format!(
                "no succeeded deploy of {version} is recorded: its contract files are not known"
            )));
            };
            d.id
        };
    contract_release(p, id, actor, force)
        .await
        .map_err(|e| PipelineError::Stopped(e.to_string()))
}

/// Runs deploy `id`'s contract files (those its expand step saw) under the
/// fence, so no switch, rollback or deploy is planned meanwhile. What makes
/// it safe is checked again there: no other deploy running, the release
/// still live, its old side stopped (unless `force`). The contract is
/// recorded before the first file runs (a crash or a failure halfway must
/// not leave rollback open onto a schema that is partly gone).
async fn contract_release(
    p: &Arc<Pipeline>,
    id: u64,
    actor: String,
    force: bool,
) -> Result<String, StepError> {
    use StepError::Refused;
    let config = p
        .config()
        .migrations
        .clone()
        .ok_or_else(|| Refused("no [deploy.migrations] in the config".into()))?;
    let _fence = p.fence.lock().await;
    let (version, marks, previous) = {
        let mut book = p.book.lock().await;
        if let Some(other) = book
            .current
            .as_ref()
            .filter(|c| !c.is_finished() && c.id != id)
        {
            return Err(Refused(format!(
                "deploy #{} ({}) is running; contract after it",
                other.id, other.version
            )));
        }
        let d = book
            .find(id)
            .ok_or_else(|| Refused(format!("deploy #{id} is not recorded")))?
            .clone();
        if p.router.live() != d.target {
            return Err(Refused(format!(
                "{} is no longer live; run `bluegreen migrate contract` when it is",
                d.version
            )));
        }
        let old = &book.sides[d.from];
        if let (Some(v), true, false) = (&old.version, old.running, force) {
            return Err(Refused(format!(
                "{} still runs {v}, so rollback to it stays possible and the contract would break it; it runs until its decommission (keep_warm, or the decommission hook; without a hook bluegreen never stops it): stop it, or pass --force",
                d.from
            )));
        }
        let marks = d.migrations.clone().map(|m| m.contract).unwrap_or_default();
        let command = matches!(config.runner, MigrationRunner::Command(_));
        if marks.is_empty() && !command {
            return Ok(format!("contract: {} brings no contract files", d.version));
        }
        let previous = book.contracted.clone();
        // Never backwards: an older release contracted again stays behind
        // the newest contract.
        if previous.as_ref().is_none_or(|c| c.deploy_id <= id) {
            book.contracted = Some(Contracted {
                deploy_id: id,
                version: d.version.clone(),
                files: marks.iter().map(|m| m.file.clone()).collect(),
                at_ms: now_ms(),
            });
            p.persist(&book)
                .await
                .map_err(|source| StepError::Persist {
                    what: "could not record the contract, so it did not run",
                    source,
                })?;
        }
        (d.version, marks, previous)
    };
    let workdir = p.config().workdir.clone();
    let say = |line: String| tracing::info!(target: "deploy", "contract: {line}");
    let result = match &config.runner {
        MigrationRunner::Database { .. } => {
            migrate::contract(&config, &workdir, &version, &marks, say)
                .await
                .map_err(|e| (e.applied, StepError::from(e.why)))
        }
        MigrationRunner::Command(cmd) => {
            let never = tokio_util::sync::CancellationToken::new();
            let side = p.router.live();
            super::expand::run_command(
                p,
                cmd,
                &config,
                "contract",
                &version,
                side,
                &Default::default(),
                &never,
            )
            .await
            .map(|()| marks.iter().map(|m| m.file.clone()).collect())
            // The app's tool may have done part of it.
            .map_err(|why| (vec!["(unknown: the command's own record says)".into()], why))
        }
    };
    let mut book = p.book.lock().await;
    let line = match &result {
        Ok(applied) if applied.is_empty() => format!("contract: {version}'s files were already applied"),
        Ok(applied) => format!(
            "contract by {actor}: applied {}; rollback to a release from before {version} is refused from now on",
            applied.join(", ")
        ),
        Err((applied, why)) if applied.is_empty() => {
            // Nothing changed: rollback stays as open as it was.
            if book.contracted.as_ref().is_some_and(|c| c.deploy_id == id) {
                book.contracted = previous;
            }
            format!("contract of {version} failed before applying anything: {why}")
        }
        Err((applied, why)) => format!(
            "contract of {version} failed after applying {}: {why}; rollback to a release from before {version} is refused (part of the schema it needs is gone)",
            applied.join(", ")
        ),
    };
    let book_ref = &mut *book;
    let mut records = book_ref
        .current
        .iter_mut()
        .chain(book_ref.history.iter_mut().rev());
    if let Some(d) = records.find(|d| d.id == id) {
        d.log(line.clone(), now_ms());
        match &result {
            Ok(applied) if !applied.is_empty() => {
                super::expand::migrated(p, "contract", d, true, &line)
            }
            Ok(_) => {}
            Err(_) => super::expand::migrated(p, "contract", d, false, &line),
        }
    }
    let saved = p.persist(&book).await;
    tracing::info!(target: "deploy", "{line}");
    match (result, saved) {
        (Ok(_), Ok(())) => Ok(line),
        (Ok(_), Err(e)) => Err(StepError::Failed(format!(
            "{line}; but recording it failed: {e}"
        ))),
        (Err(_), _) => Err(StepError::Failed(line)),
    }
}
