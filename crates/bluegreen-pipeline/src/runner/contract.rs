//! The contract migrations (the destructive part) of a release: run once
//! rollback to the version before is no longer possible, that is, once the
//! old side was stopped after the bake and `keep_warm`; or by hand with
//! `bluegreen migrate contract`. Afterwards rollback to a release from
//! before is refused (`rollback::past_contract`).

use super::*;
use crate::migrate;
use bluegreen_core::config::migrations::MigrationRunner;
use bluegreen_core::deploy::Contracted;

/// After the old side of deploy `id` was stopped: its release's contract
/// files, if it is still the live release. The line for the deploy log.
pub(crate) async fn after_decommission(p: &Arc<Pipeline>, id: u64) -> Option<String> {
    p.config().migrations.as_ref()?;
    let (version, target) = {
        let book = p.book.lock().await;
        let d = book.find(id)?;
        if d.is_finished() && d.outcome != Outcome::Succeeded {
            return None;
        }
        (d.version.clone(), d.target)
    };
    if p.router.live() != target {
        return Some(format!(
            "contract not run: {version} is no longer live; run `bluegreen migrate contract` when it is"
        ));
    }
    Some(match contract_release(p, id, "pipeline".into()).await {
        Ok(line) => line,
        Err(e) => format!(
            "contract failed: {e}; {version} stays live, nothing was rolled back; fix it and run `bluegreen migrate contract`"
        ),
    })
}

/// `bluegreen migrate contract`: the live release's contract files, now.
/// Refused while a deploy runs, and while the old side still runs a
/// release rollback could switch to instantly (unless `force`).
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
    let live = p.router.live();
    let id = {
        let book = p.book.lock().await;
        if let Some(d) = book.current.as_ref().filter(|d| !d.is_finished()) {
            return Err(crate::busy(d));
        }
        let idle = &book.sides[live.other()];
        if let (Some(v), true, false) = (&idle.version, idle.running, force) {
            return Err(PipelineError::Stopped(format!(
                "{} still runs {v}, so rollback to it is instant; contract would break it: wait for its decommission (keep_warm), stop it, or pass --force",
                live.other()
            )));
        }
        let Some(version) = book.sides[live].version.clone() else {
            return Err(PipelineError::Stopped(format!(
                "no release recorded on {live}: nothing to contract for"
            )));
        };
        let Some(d) =
            book.history.iter().rev().find(|d| {
                d.version == version && d.target == live && d.outcome == Outcome::Succeeded
            })
        else {
            return Err(PipelineError::Stopped(format!(
                "no succeeded deploy of {version} is recorded: its contract files are not known"
            )));
        };
        d.id
    };
    contract_release(p, id, actor)
        .await
        .map_err(PipelineError::Stopped)
}

/// Runs deploy `id`'s contract files (those its expand step saw), under the
/// fence (no switch or rollback is planned meanwhile), and records the
/// contract so rollback past it is refused.
async fn contract_release(p: &Arc<Pipeline>, id: u64, actor: String) -> Result<String, String> {
    let config = p
        .config()
        .migrations
        .clone()
        .ok_or("no [deploy.migrations] in the config")?;
    let _fence = p.fence.lock().await;
    let (version, marks) = {
        let book = p.book.lock().await;
        let d = book
            .find(id)
            .ok_or(format!("deploy #{id} is not recorded"))?;
        (
            d.version.clone(),
            d.migrations.clone().map(|m| m.contract).unwrap_or_default(),
        )
    };
    if marks.is_empty() {
        return Ok(format!("contract: {version} brings no contract files"));
    }
    let workdir = p.config().workdir.clone();
    let say = |line: String| tracing::info!(target: "deploy", "contract: {line}");
    let applied = match &config.runner {
        MigrationRunner::Database { .. } => {
            migrate::contract(&config, &workdir, &version, &marks, say).await?
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
            .await?;
            marks.iter().map(|m| m.file.clone()).collect()
        }
    };
    let mut book = p.book.lock().await;
    let files: Vec<String> = marks.iter().map(|m| m.file.clone()).collect();
    book.contracted = Some(Contracted {
        deploy_id: id,
        version: version.clone(),
        files: files.clone(),
        at_ms: now_ms(),
    });
    let line = if applied.is_empty() {
        format!("contract: {} already applied", files.join(", "))
    } else {
        format!(
            "contract by {actor}: applied {}; rollback to a release from before {version} is refused from now on",
            applied.join(", ")
        )
    };
    let book_ref = &mut *book;
    let mut records = book_ref
        .current
        .iter_mut()
        .chain(book_ref.history.iter_mut().rev());
    if let Some(d) = records.find(|d| d.id == id) {
        d.log(line.clone(), now_ms());
    }
    p.persist(&book)
        .await
        .map_err(|e| format!("the contract ran, but recording it failed: {e}"))?;
    tracing::info!(target: "deploy", "{line}");
    Ok(line)
}
