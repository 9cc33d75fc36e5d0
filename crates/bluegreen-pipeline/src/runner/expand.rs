//! Step 0: the expand migrations (additive only: linted first), then the
//! live (old) version's smoke tests on the expanded schema, before anything
//! of the new version runs.

use super::*;
use crate::migrate;
use bluegreen_core::config::migrations::{MigrationRunner, MigrationsConfig};
use bluegreen_core::deploy::MigrationMark;

pub(super) async fn expand(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let Some(config) = p.config().migrations.clone() else {
        return StepEnd::Skipped("no [deploy.migrations]".into());
    };
    // An abort cancels the statement running (its file is rolled back)
    // and the files after it.
    let detail = match apply(p, handle, d, &config).await {
        Ok(detail) => detail,
        Err(e) if handle.abort.is_cancelled() => {
            return StepEnd::End(
                Outcome::Aborted,
                format!("{} (expand: {e})", aborted(handle)),
            )
        }
        Err(e) => {
            return StepEnd::End(
                Outcome::Failed,
                format!("expand: {e}; the new version was not deployed"),
            )
        }
    };
    if d.options.skip_smoke {
        return StepEnd::Done(Some(format!(
            "{detail}; live smoke tests skipped by --skip-smoke"
        )));
    }
    match live_smoke(p, handle).await {
        Ok(Some(checked)) => StepEnd::Done(Some(format!("{detail}; {checked}"))),
        Ok(None) => StepEnd::Done(Some(detail)),
        Err(StepEnd::End(outcome, why)) => StepEnd::End(
            outcome,
            format!(
                "{detail}, but the live version fails its smoke tests on the expanded schema: {why}. The new version was not deployed; the applied expand files stay (fix forward with a new expand file)"
            ),
        ),
        Err(other) => other,
    }
}

/// Applies the pending expand files (or runs the app's command) and keeps
/// the release's contract files in the record.
async fn apply(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    d: &DeployRecord,
    config: &MigrationsConfig,
) -> Result<String, StepError> {
    let workdir = p.config().workdir.clone();
    match &config.runner {
        MigrationRunner::Database { .. } => {
            let lines = LineLog::start(p, "expand: ");
            let result = migrate::expand(
                config,
                &workdir,
                &d.version,
                inherits(p, d).await,
                &handle.abort,
                lines.sink(),
            )
            .await;
            lines.finish().await;
            let done = result?;
            mark(p, done.contract.clone()).await?;
            let contract = if done.contract.is_empty() {
                String::new()
            } else {
                format!(
                    "; contract after the point of no return: {}",
                    done.contract
                        .iter()
                        .map(|m| m.file.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Ok(match done.applied.len() {
                0 => format!(
                    "schema up to date ({} expand file(s) applied before){contract}",
                    done.before
                ),
                n => {
                    let line = format!(
                        "applied {n} expand file(s): {}{contract}",
                        done.applied.join(", ")
                    );
                    migrated(p, "expand", d, true, &line);
                    line
                }
            })
        }
        MigrationRunner::Command(cmd) => {
            // The app's tool knows what it applied; bluegreen lints the
            // whole directory and notes its contract files for the record.
            let files = migrate::load(&config.dir).await?;
            migrate::lint(&files, config.dialect)?;
            let contract = if inherits(p, d).await {
                files
                    .iter()
                    .filter(|f| f.file.phase == bluegreen_core::migration::Phase::Contract)
                    .map(|f| bluegreen_core::deploy::FileMark {
                        file: f.file.file_name(),
                        checksum: f.checksum.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            mark(p, contract).await?;
            run_command(
                p,
                cmd,
                config,
                "expand",
                &d.version,
                d.target,
                &d.options.env,
                &handle.abort,
            )
            .await?;
            let line = format!(
                "{} ran (expand); {} file(s) linted",
                cmd.render(&[("phase", "expand"), ("version", &d.version)])
                    .join(" "),
                files.len()
            );
            migrated(p, "expand", d, true, &line);
            Ok(line)
        }
    }
}

/// Tells the event stream (and so `[[notify]]`) that migrations ran.
pub(super) fn migrated(p: &Pipeline, phase: &'static str, d: &DeployRecord, ok: bool, line: &str) {
    p.router.emit(Event::Migration {
        phase,
        deploy_id: d.id,
        version: d.version.clone(),
        ok,
        detail: line.to_string(),
    });
}

/// Whether this deploy's release owns the pending contract files: not when
/// it goes back to an older release (a rollback re-deploy, or a version that
/// was released before), whose code still needs what they remove.
async fn inherits(p: &Pipeline, d: &DeployRecord) -> bool {
    if d.options.reason.starts_with("rollback:") {
        return false;
    }
    let book = p.book.lock().await;
    !book
        .history
        .iter()
        .any(|h| h.id < d.id && h.version == d.version && h.outcome == Outcome::Succeeded)
}

/// Keeps what the release's contract will run in its record, durably
/// (the contract may come after a restart).
async fn mark(
    p: &Arc<Pipeline>,
    contract: Vec<bluegreen_core::deploy::FileMark>,
) -> Result<(), StepError> {
    update(p, |d| d.migrations = Some(MigrationMark { contract })).await
}

/// Runs the app's migration command for `phase`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_command(
    p: &Arc<Pipeline>,
    cmd: &bluegreen_core::config::deploy::CommandTemplate,
    config: &MigrationsConfig,
    phase: &str,
    version: &str,
    side: Side,
    env: &std::collections::BTreeMap<String, String>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), StepError> {
    let dir = config.dir.display().to_string();
    let argv = cmd.render(&[
        ("phase", phase),
        ("version", version),
        ("env", side.as_str()),
        ("dir", &dir),
        ("bluegreen", crate::exe()),
    ]);
    HookCall::new(p, argv, side, version, env)
        .run(p, cancel)
        .await
        .map_err(|source| StepError::Command {
            what: format!("migration command ({phase})"),
            source,
        })
}

/// The smoke tests against the live side, through the live listener: the
/// old version must still work on the expanded schema. `None` when there is
/// nothing to check (no smoke tests, or nothing live yet).
async fn live_smoke(p: &Arc<Pipeline>, handle: &RunHandle) -> Result<Option<String>, StepEnd> {
    if p.config().smoke.is_empty() {
        return Ok(None);
    }
    let live = p.router.live();
    let version = p.book.lock().await.sides[live].version.clone();
    let Some(version) = version else {
        return Ok(Some(format!(
            "nothing deployed on {live} yet: no live version to smoke-test"
        )));
    };
    let (healthy, _, _) = p.router.side_health(live);
    if healthy == 0 {
        return Ok(Some(format!(
            "{live} has no healthy upstream: live smoke tests not run"
        )));
    }
    let addr = p.router.listener_addr("proxy");
    let target = checks::SmokeTarget {
        addr,
        listener: "proxy.listen",
        side: live,
        version: &version,
        env: &Default::default(),
        url_label: "live",
    };
    let n = checks::run_smoke(p, handle, &target).await?;
    Ok(Some(format!(
        "the live version {version} on {live} passed {n} smoke test(s) on it"
    )))
}
