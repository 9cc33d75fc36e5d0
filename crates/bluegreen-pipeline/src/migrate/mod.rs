//! Database migrations as part of the release: expand (additive, linted
//! first) before the new version is deployed, contract (destructive) once
//! rollback to the old version is no longer possible, and what is applied.
//! The files are read and the SQL is split by `bluegreen_core::migration`;
//! `db` applies them.

mod apply;
pub mod db;
mod error;

pub use error::MigrateError;
use MigrateError::{Changed, Files, Setup};

use bluegreen_core::config::migrations::{DatabaseUrl, MigrationRunner, MigrationsConfig};
use bluegreen_core::deploy::FileMark;
use bluegreen_core::migration::{check_file, scan, shape, Flavor, MigrationFile, Phase, Problem};
use db::{Applied, Applying, Db};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting to the database may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// A file of the directory with its text and checksum.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: MigrationFile,
    pub sql: String,
    /// SHA-256 of the bytes, hex.
    pub checksum: String,
}

/// Reads the directory (off the async threads). A directory that does not
/// exist holds no files.
pub async fn load(dir: &Path) -> Result<Vec<Loaded>, MigrateError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || load_blocking(&dir))
        .await
        .map_err(|e| Files(e.to_string()))?
}

/// [`load`], on the calling thread (`migrate lint` has no router).
pub fn load_blocking(dir: &Path) -> Result<Vec<Loaded>, MigrateError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    scan(dir)
        .map_err(Files)?
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file.path)
                .map_err(|e| Files(format!("{}: {e}", file.path.display())))?;
            let sql = String::from_utf8(bytes)
                .map_err(|_| Files(format!("{}: not UTF-8 text", file.path.display())))?;
            // One text whatever the checkout did to it: no byte-order
            // mark, LF line ends (so a CRLF checkout is not "changed").
            let sql = sql
                .strip_prefix('\u{feff}')
                .unwrap_or(&sql)
                .replace("\r\n", "\n");
            let checksum = checksum(sql.as_bytes());
            Ok(Loaded {
                file,
                sql,
                checksum,
            })
        })
        .collect()
}

/// SHA-256, hex.
pub fn checksum(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The one check, run by `migrate lint` and by the deploy's expand step
/// alike: applied files whose text changed since are refused (with both
/// checksums); every file not applied yet is checked by
/// [`check_file`] (parse, transaction control, `CONCURRENTLY` beside other
/// statements, lock rules, and for expand files what the running version
/// cannot live with). Files applied before are not judged again (a newer
/// linter must not block every deploy over a file that can no longer
/// change).
pub fn check(files: &[Loaded], applied: &[Applied], flavor: Flavor) -> Vec<Problem> {
    let mut out: Vec<Problem> = changed(files, applied)
        .into_iter()
        .map(Problem::Refused)
        .collect();
    for f in files.iter().filter(|f| find(applied, &f.file).is_none()) {
        out.extend(check_file(&f.file, &f.sql, flavor));
    }
    out
}

/// [`check`] as the deploy reports it: one error listing every problem.
pub fn refuse(problems: &[Problem]) -> Result<(), MigrateError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(MigrateError::Refused(
        problems.iter().map(|p| p.to_string()).collect(),
    ))
}

/// Every file checked as if nothing were applied (the `command` runner's
/// tool keeps its own record).
pub fn lint<'a>(
    files: impl IntoIterator<Item = &'a Loaded>,
    flavor: Flavor,
) -> Result<(), MigrateError> {
    let files: Vec<Loaded> = files.into_iter().cloned().collect();
    refuse(&check(&files, &[], flavor))
}

/// The database `config` names, connected. The URL comes from the
/// environment when this runs (never from the config file); relative SQLite
/// paths are from `workdir`.
pub async fn open(
    config: &MigrationsConfig,
    workdir: &Path,
    create: bool,
) -> Result<Db, MigrateError> {
    let MigrationRunner::Database { url_env } = &config.runner else {
        return Err(Setup(
            "deploy.migrations runs a command: there is no database to open".into(),
        ));
    };
    let url = std::env::var(url_env).map_err(|_| {
        Setup(format!("${url_env} is not set in the router's environment (deploy.migrations.database_url_env)"))
    })?;
    Db::connect(
        &DatabaseUrl::parse(&url, url_env, workdir).map_err(Setup)?,
        CONNECT_LIMIT,
        create,
    )
    .await
}

/// Applied files whose text changed since, named with both checksums.
fn changed(files: &[Loaded], applied: &[Applied]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| {
            let row = find(applied, &f.file)?;
            (row.checksum != f.checksum).then(|| {
                format!(
                    "{} was applied by {} at {} with checksum {} and now has {}: an applied migration must not change; undo the edit and put the change in a new file",
                    f.file.file_name(),
                    row.version,
                    row.applied_at,
                    &row.checksum[..row.checksum.len().min(12)],
                    &f.checksum[..12]
                )
            })
        })
        .collect()
}

fn find<'a>(applied: &'a [Applied], f: &MigrationFile) -> Option<&'a Applied> {
    applied
        .iter()
        .find(|a| a.name == f.id() && a.phase == f.phase.as_str())
}

/// What an expand did.
#[derive(Debug, Default)]
pub struct Expanded {
    /// Files applied now.
    pub applied: Vec<String>,
    /// Expand files applied before.
    pub before: usize,
    /// The contract files this release brings.
    pub contract: Vec<FileMark>,
}

/// Lints the pending files, refuses changed applied ones, then applies the
/// pending expand files in order, each in its own transaction. `progress`
/// hears of each file; `cancel` stops the statement running (its file is
/// rolled back) and the files after it. Running it again after a crash
/// applies what is left. With `inherit`, the pending contract files are
/// this release's to run (not for a rollback to an older release).
pub async fn expand(
    config: &MigrationsConfig,
    workdir: &Path,
    version: &str,
    inherit: bool,
    cancel: &tokio_util::sync::CancellationToken,
    progress: impl Fn(String),
) -> Result<Expanded, MigrateError> {
    let files = load(&config.dir).await?;
    let db = open(config, workdir, true).await?;
    let applied = db.applied(true).await?;
    refuse(&check(&files, &applied, db.flavor()))?;
    let pending: Vec<&Loaded> = files
        .iter()
        .filter(|f| find(&applied, &f.file).is_none())
        .collect();
    let mut out = Expanded {
        before: files
            .iter()
            .filter(|f| f.file.phase == Phase::Expand)
            .count()
            .saturating_sub(
                pending
                    .iter()
                    .filter(|f| f.file.phase == Phase::Expand)
                    .count(),
            ),
        contract: if inherit {
            pending
                .iter()
                .filter(|f| f.file.phase == Phase::Contract)
                .map(|f| FileMark {
                    file: f.file.file_name(),
                    checksum: f.checksum.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        ..Expanded::default()
    };
    let limits = db::Limits {
        timing: config.timing,
        deadline: tokio::time::Instant::now() + config.timing.deadline,
        cancel: cancel.clone(),
    };
    let watcher = cancel_on(cancel, &db);
    let result = async {
        for f in pending.iter().filter(|f| f.file.phase == Phase::Expand) {
            if cancel.is_cancelled() {
                // The abort is said once, below.
                return Err(MigrateError::Failed(format!(
                    "{} and the files after it were not applied",
                    f.file.file_name()
                )));
            }
            apply(&db, f, version, &limits, &progress).await?;
            out.applied.push(f.file.file_name());
        }
        Ok(())
    }
    .await;
    watcher.abort();
    result.map(|()| out).map_err(|e| match e {
        e if cancel.is_cancelled() => MigrateError::Aborted(Box::new(e)),
        e => e,
    })
}

/// Cancels the running statement when `cancel` fires.
fn cancel_on(cancel: &tokio_util::sync::CancellationToken, db: &Db) -> tokio::task::JoinHandle<()> {
    let (cancel, canceller) = (cancel.clone(), db.canceller());
    tokio::spawn(async move {
        cancel.cancelled().await;
        canceller.cancel().await;
    })
}

async fn apply(
    db: &Db,
    f: &Loaded,
    version: &str,
    limits: &db::Limits,
    progress: &impl Fn(String),
) -> Result<(), MigrateError> {
    let shape = shape(&f.file.path, &f.sql, db.flavor()).map_err(Files)?;
    let started = std::time::Instant::now();
    let n = shape.statements.len();
    let how = db
        .apply(&f.file, shape, &f.checksum, version, limits)
        .await?;
    progress(match how {
        Applying::Applied { lock_waits: 0 } => format!(
            "applied {} ({n} statement(s), {} ms)",
            f.file.file_name(),
            started.elapsed().as_millis()
        ),
        Applying::Applied { lock_waits } => format!(
            "applied {} ({n} statement(s), {} ms; {lock_waits} attempt(s) before waited longer than lock_timeout ({}) and were rolled back so live traffic could drain)",
            f.file.file_name(),
            started.elapsed().as_millis(),
            humantime::format_duration(limits.timing.lock_timeout)
        ),
        Applying::AlreadyThere => format!(
            "{} was applied meanwhile by another runner",
            f.file.file_name()
        ),
    });
    Ok(())
}

/// Why a contract stopped, and what it had applied by then.
#[derive(Debug)]
pub struct ContractError {
    pub applied: Vec<String>,
    pub why: MigrateError,
}

/// Applies the contract files in `marks` that are still pending, each as
/// it was when the release's expand step saw it (a file edited since is
/// refused). Returns the files applied now.
pub async fn contract(
    config: &MigrationsConfig,
    workdir: &Path,
    version: &str,
    marks: &[FileMark],
    progress: impl Fn(String),
) -> Result<Vec<String>, ContractError> {
    let mut done = Vec::new();
    let result = contract_into(config, workdir, version, marks, &progress, &mut done).await;
    match result {
        Ok(()) => Ok(done),
        Err(why) => Err(ContractError { applied: done, why }),
    }
}

async fn contract_into(
    config: &MigrationsConfig,
    workdir: &Path,
    version: &str,
    marks: &[FileMark],
    progress: &impl Fn(String),
    done: &mut Vec<String>,
) -> Result<(), MigrateError> {
    let files = load(&config.dir).await?;
    let db = open(config, workdir, false).await?;
    let applied = db.applied(true).await?;
    let limits = db::Limits {
        timing: config.timing,
        deadline: tokio::time::Instant::now() + config.timing.deadline,
        cancel: tokio_util::sync::CancellationToken::new(),
    };
    for mark in marks {
        let Some(f) = files.iter().find(|f| f.file.file_name() == mark.file) else {
            if applied
                .iter()
                .any(|a| format!("{}.{}.sql", a.name, a.phase) == mark.file)
            {
                continue;
            }
            return Err(Changed(format!(
                "{}: gone from {} (it was there when this release was expanded)",
                mark.file,
                config.dir.display()
            )));
        };
        if let Some(row) = find(&applied, &f.file) {
            if row.checksum != f.checksum {
                return Err(Changed(changed(std::slice::from_ref(f), &applied).join("")));
            }
            continue;
        }
        if f.checksum != mark.checksum {
            return Err(Changed(format!(
                "{} changed since this release's expand step saw it (checksum {} then, {} now): deploy the release again to contract with the new text",
                mark.file,
                &mark.checksum[..12.min(mark.checksum.len())],
                &f.checksum[..12]
            )));
        }
        lint([f], db.flavor())?;
        apply(&db, f, version, &limits, progress).await?;
        done.push(mark.file.clone());
    }
    Ok(())
}

/// One file as `migrate status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileStatus {
    pub file: String,
    pub phase: &'static str,
    /// `applied`, `pending`, `changed` (applied, then edited), or `missing`
    /// (applied, the file is gone).
    pub state: &'static str,
    pub checksum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}

/// Every file of the directory and every row of the tracking table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub dir: PathBuf,
    /// `postgres`, `sqlite` or `command`.
    pub runner: &'static str,
    pub files: Vec<FileStatus>,
}

/// What is applied and what is pending, per phase.
pub async fn status(config: &MigrationsConfig, workdir: &Path) -> Result<Status, MigrateError> {
    let files = load(&config.dir).await?;
    let (runner, applied) = match &config.runner {
        MigrationRunner::Command(_) => ("command", Vec::new()),
        MigrationRunner::Database { .. } => {
            let db = open(config, workdir, false).await?;
            let name = match db.flavor() {
                Flavor::Postgres => "postgres",
                Flavor::Sqlite => "sqlite",
            };
            (name, db.applied(false).await?)
        }
    };
    let mut out: Vec<FileStatus> = files
        .iter()
        .map(|f| {
            let row = find(&applied, &f.file);
            FileStatus {
                file: f.file.file_name(),
                phase: f.file.phase.as_str(),
                state: match row {
                    None if runner == "command" => "unknown",
                    None => "pending",
                    Some(r) if r.checksum != f.checksum => "changed",
                    Some(_) => "applied",
                },
                checksum: f.checksum.clone(),
                version: row.map(|r| r.version.clone()),
                applied_at: row.map(|r| r.applied_at.clone()),
            }
        })
        .collect();
    for a in &applied {
        if !files
            .iter()
            .any(|f| f.file.id() == a.name && f.file.phase.as_str() == a.phase)
        {
            out.push(FileStatus {
                file: format!("{}.{}.sql", a.name, a.phase),
                phase: if a.phase == "expand" {
                    "expand"
                } else {
                    "contract"
                },
                state: "missing",
                checksum: a.checksum.clone(),
                version: Some(a.version.clone()),
                applied_at: Some(a.applied_at.clone()),
            });
        }
    }
    out.sort_by(|a, b| (a.phase != "expand", &a.file).cmp(&(b.phase != "expand", &b.file)));
    Ok(Status {
        dir: config.dir.clone(),
        runner,
        files: out,
    })
}

/// Test hook: `BLUEGREEN_CRASH_AT=migration:FILE` kills the process with
/// SIGKILL after FILE's statements ran, before its transaction commits.
pub(crate) fn crash_point(file: &str) {
    if std::env::var("BLUEGREEN_CRASH_AT").is_ok_and(|at| at == format!("migration:{file}")) {
        eprintln!("BLUEGREEN_CRASH_AT=migration:{file}: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_sha256_hex() {
        assert_eq!(
            checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
