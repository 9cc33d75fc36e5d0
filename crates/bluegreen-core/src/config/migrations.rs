//! `[deploy.migrations]`: where the migration files are and what runs them
//! (the database itself, or the app's own tool).

use super::checker::Checker;
use super::template::CommandTemplate;
use crate::migration::Flavor;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Placeholders of `deploy.migrations.command`.
pub const MIGRATE_VARS: &[&str] = &["phase", "version", "env", "dir", "bluegreen"];

/// Database migrations as pipeline steps: expand before the deploy,
/// contract once rollback is no longer possible.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationsConfig {
    /// `NNNN_name.expand.sql` and `NNNN_name.contract.sql` (absolute).
    pub dir: PathBuf,
    pub runner: MigrationRunner,
    /// How long statements may wait for locks and run.
    pub timing: Timing,
    /// The SQL the linter parses with the `command` runner (with a
    /// database URL, its scheme decides).
    pub dialect: Flavor,
}

/// Live traffic queues behind a DDL statement that waits for a lock, so a
/// statement waits only briefly, gives up, lets the queue drain, and tries
/// again (with backoff and jitter) until the step's deadline, as pgroll and
/// strong_migrations do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// How long one attempt may wait for a lock: the longest stall it can
    /// cause to live queries of the table.
    pub lock_timeout: Duration,
    /// How long a step (expand or contract) keeps retrying lock waits.
    pub deadline: Duration,
    /// How long one statement may run once it has its locks.
    pub statement_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lock_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(60),
            statement_timeout: Duration::from_secs(300),
        }
    }
}

/// What applies the files.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationRunner {
    /// bluegreen applies them itself: the URL (`postgres://…` or
    /// `sqlite:path`) is read from this environment variable when a step
    /// runs, so the secret is never in the config file.
    Database { url_env: String },
    /// The app's own tool (`{phase}` is `expand` or `contract`); bluegreen
    /// only lints the files (when the directory exists) and gates on its exit.
    Command(CommandTemplate),
}

#[derive(Debug, Deserialize)]
pub(super) struct RawMigrations {
    dir: Option<String>,
    database_url_env: Option<String>,
    command: Option<String>,
    lock_timeout: Option<String>,
    deadline: Option<String>,
    statement_timeout: Option<String>,
    dialect: Option<String>,
}

pub(super) fn validate(
    raw: &RawMigrations,
    base: &Path,
    c: &mut Checker,
) -> Option<MigrationsConfig> {
    let dir = base.join(raw.dir.as_deref().unwrap_or("migrations"));
    let runner = match (&raw.database_url_env, &raw.command) {
        (Some(_), Some(_)) => {
            c.issue(
                "deploy.migrations",
                "set either database_url_env (bluegreen applies the files) or command (the app's own tool), not both",
            );
            return None;
        }
        (_, Some(cmd)) => MigrationRunner::Command(c.template(
            "deploy.migrations.command",
            cmd,
            MIGRATE_VARS,
            base,
        )?),
        (env, None) => {
            let env = env.clone().unwrap_or_else(|| "DATABASE_URL".into());
            if env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                c.issue(
                    "deploy.migrations.database_url_env",
                    format!("{env:?} is not an environment variable name"),
                );
                return None;
            }
            MigrationRunner::Database { url_env: env }
        }
    };
    let has_dir = std::fs::metadata(&dir).is_ok_and(|m| m.is_dir());
    if !has_dir && matches!(runner, MigrationRunner::Database { .. }) {
        c.issue(
            "deploy.migrations.dir",
            format!("{} is not a directory", dir.display()),
        );
    }
    let d = Timing::default();
    let timing = Timing {
        lock_timeout: c.duration(
            "deploy.migrations.lock_timeout",
            raw.lock_timeout.as_deref(),
            d.lock_timeout,
        ),
        deadline: c.duration(
            "deploy.migrations.deadline",
            raw.deadline.as_deref(),
            d.deadline,
        ),
        statement_timeout: c.duration(
            "deploy.migrations.statement_timeout",
            raw.statement_timeout.as_deref(),
            d.statement_timeout,
        ),
    };
    for (key, v) in [
        ("lock_timeout", timing.lock_timeout),
        ("statement_timeout", timing.statement_timeout),
    ] {
        if v < Duration::from_millis(1) {
            c.issue(
                format!("deploy.migrations.{key}"),
                "must be at least 1ms (PostgreSQL reads 0 as no limit at all)",
            );
        }
    }
    if timing.deadline < timing.lock_timeout {
        c.issue(
            "deploy.migrations.deadline",
            format!(
                "{} is shorter than lock_timeout ({}): not even one attempt would fit",
                humantime::format_duration(timing.deadline),
                humantime::format_duration(timing.lock_timeout)
            ),
        );
    }
    let dialect = match raw.dialect.as_deref() {
        None | Some("postgres") => Flavor::Postgres,
        Some("sqlite") => Flavor::Sqlite,
        Some(other) => {
            c.issue(
                "deploy.migrations.dialect",
                format!("{other:?}: expected \"postgres\" or \"sqlite\""),
            );
            Flavor::Postgres
        }
    };
    Some(MigrationsConfig {
        dir,
        runner,
        timing,
        dialect,
    })
}

/// Where a database URL points, from its scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// As given: `postgres://` or `postgresql://` (libpq's URL form).
    Postgres(String),
    /// `sqlite:path` or `sqlite://path`; a relative path is taken from `base`.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Parses `url` (read from `env`, named in errors; the URL itself is
    /// never repeated: it may hold a password).
    pub fn parse(url: &str, env: &str, base: &Path) -> Result<DatabaseUrl, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // No TLS client here yet: say so rather than fail in the handshake.
            if [
                "sslmode=require",
                "sslmode=verify-ca",
                "sslmode=verify-full",
            ]
            .iter()
            .any(|m| url.contains(m))
            {
                return Err(format!(
                    "${env}: TLS to PostgreSQL (sslmode=require/verify-*) is not supported yet: use sslmode=disable on a private network, or deploy.migrations.command with your own tool"
                ));
            }
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!(
                    "${env}: sqlite: needs a path, e.g. sqlite:data/app.db"
                ));
            }
            return Ok(DatabaseUrl::Sqlite(base.join(path)));
        }
        // Named only when it looks like a scheme: a key=value connection
        // string may hold a password before its first colon.
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 16
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b == b'+'
                            || b == b'-'
                            || b == b'.'
                    })
            })
            .unwrap_or("(none)");
        Err(format!(
            "${env}: unsupported database URL scheme {scheme:?}: expected postgres://… or sqlite:path"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_variable_and_never_repeat_a_password() {
        let base = Path::new("/srv/app");
        assert_eq!(
            DatabaseUrl::parse("postgres://u:secret@h/db", "DATABASE_URL", base),
            Ok(DatabaseUrl::Postgres("postgres://u:secret@h/db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:data/app.db", "DB", base),
            Ok(DatabaseUrl::Sqlite("/srv/app/data/app.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/app.db", "DB", base),
            Ok(DatabaseUrl::Sqlite("/var/app.db".into()))
        );
        let e = DatabaseUrl::parse("mysql://u:secret@h/db", "DB", base).unwrap_err();
        assert!(e.contains("$DB") && e.contains("\"mysql\""), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = DatabaseUrl::parse("password=s3:cret host=db", "DB", base).unwrap_err();
        assert!(!e.contains("s3") && e.contains("(none)"), "{e}");
        let e = DatabaseUrl::parse("postgres://h/db?sslmode=require", "DB", base).unwrap_err();
        assert!(e.contains("not supported yet"), "{e}");
    }
}
