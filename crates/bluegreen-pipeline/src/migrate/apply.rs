//! Applying one file (`Db::apply`): SQLite under its write lock, and
//! PostgreSQL under short lock waits. A DDL statement that waits
//! for a lock makes every later query of the table queue behind it, so
//! each attempt waits at most `lock_timeout`, then the file's transaction
//! is rolled back (no lock is kept while backing off: the queue drains)
//! and the file is tried again after a backoff with jitter, until the
//! step's deadline; as pgroll and strong_migrations do. At the deadline
//! the error names the sessions holding the table (pid, state, query)
//! from `pg_stat_activity`.
//!
//! A file with `CREATE INDEX CONCURRENTLY` (and the like) runs outside a
//! transaction in one attempt: its lock (SHARE UPDATE EXCLUSIVE) does not
//! conflict with reads and writes, so live queries do not queue behind it
//! while it waits; it may wait up to the deadline.

use super::db::{
    apply_sqlite, blocking, pg_error, Applying, Context, Db, Limits, ADVISORY_KEY, TABLE,
};
use super::MigrateError::{self, Failed as Final};
use bluegreen_core::migration::{Flavor, MigrationFile, Shape, SqlStatement};
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;

impl Db {
    /// Applies the statements of `file` and records it, in one transaction
    /// (PostgreSQL: each attempt with a short `lock_timeout`, retried until
    /// `deadline`; SQLite: waiting at most `lock_timeout` for the write
    /// lock). The error names file, line, statement and why.
    pub async fn apply(
        &self,
        file: &MigrationFile,
        shape: Shape,
        checksum: &str,
        version: &str,
        limits: &Limits,
    ) -> Result<Applying, MigrateError> {
        let ctx = Context {
            file: file.file_name(),
            name: file.id(),
            phase: file.phase.as_str(),
            checksum: checksum.to_string(),
            version: version.to_string(),
            timing: limits.timing,
            deadline: limits.deadline,
            cancel: limits.cancel.clone(),
            in_tx: shape.outside_transaction.is_none(),
        };
        let statements = shape.statements;
        match self {
            Db::Postgres(c) => apply_postgres(c, &ctx, &statements).await,
            Db::Sqlite(conn) => {
                let conn = conn.clone();
                blocking(move || {
                    let conn = conn.lock().unwrap_or_else(|x| x.into_inner());
                    apply_sqlite(&conn, &ctx, &statements)
                })
                .await
            }
        }
    }
}

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why an attempt ended without the file applied.
enum Failed {
    /// A statement (or the migration lock) waited longer than lock_timeout.
    Lock(Option<SqlStatement>),
    /// Anything else: final.
    Other(MigrateError),
}

pub(super) async fn apply_postgres(
    c: &tokio_postgres::Client,
    ctx: &Context,
    statements: &[SqlStatement],
) -> Result<Applying, MigrateError> {
    if !ctx.in_tx && statements.len() > 1 {
        return Err(Final(format!(
            "{}: CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction: put it in a file of its own",
            ctx.file
        )));
    }
    let mut backoff = ctx.timing.lock_timeout.max(Duration::from_millis(50));
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let failed = match attempt(c, ctx, statements).await {
            Ok(Applying::Applied { .. }) => {
                return Ok(Applying::Applied {
                    lock_waits: attempts - 1,
                })
            }
            Ok(a) => return Ok(a),
            Err(Failed::Other(e)) => return Err(e),
            Err(Failed::Lock(st)) => st,
        };
        let pause = jitter(backoff);
        if ctx.cancel.is_cancelled() {
            return Err(Final(format!(
                "{}: aborted while waiting for a lock; nothing was applied",
                ctx.file
            )));
        }
        if !ctx.in_tx || Instant::now() + pause + ctx.timing.lock_timeout > ctx.deadline {
            return Err(Final(gave_up(c, ctx, failed.as_ref(), attempts).await));
        }
        tracing::info!(
            file = %ctx.file,
            attempt = attempts,
            pause_ms = pause.as_millis() as u64,
            "lock wait longer than lock_timeout: rolled back, trying again"
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = ctx.cancel.cancelled() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One try: the file and its row in one transaction (or, outside one, the
/// lone statement under the session-level migration lock).
async fn attempt(
    c: &tokio_postgres::Client,
    ctx: &Context,
    statements: &[SqlStatement],
) -> Result<Applying, Failed> {
    let in_tx = ctx.in_tx;
    let ms = |d: Duration| d.as_millis().max(1);
    let statement_ms = ms(ctx.timing.statement_timeout);
    let setup = if in_tx {
        format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{statement_ms}ms'; SELECT pg_advisory_xact_lock({ADVISORY_KEY})",
            ms(ctx.timing.lock_timeout)
        )
    } else {
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        format!(
            "SET lock_timeout = '{}ms'; SET statement_timeout = '{statement_ms}ms'; SELECT pg_advisory_lock({ADVISORY_KEY})",
            ms(left)
        )
    };
    let end = |ok: bool| match (in_tx, ok) {
        (true, true) => "COMMIT",
        (true, false) => "ROLLBACK",
        (false, _) => {
            "RESET lock_timeout; RESET statement_timeout; SELECT pg_advisory_unlock_all()"
        }
    };
    let is_lock = |e: &tokio_postgres::Error| e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE);
    if let Err(e) = c.batch_execute(&setup).await {
        let _ = c.batch_execute(end(false)).await;
        return Err(if is_lock(&e) {
            Failed::Lock(None)
        } else {
            Failed::Other(Final(format!("{}: starting: {}", ctx.file, pg_error(&e))))
        });
    }
    let result = async {
        let found = c
            .query_opt(
                &format!("SELECT checksum FROM {TABLE} WHERE name = $1 AND phase = $2"),
                &[&ctx.name, &ctx.phase],
            )
            .await
            .map_err(|e| {
                Failed::Other(MigrateError::Database(format!(
                    "reading {TABLE}: {}",
                    pg_error(&e)
                )))
            })?;
        if let Some(row) = found {
            let old: String = row.get(0);
            return if old == ctx.checksum {
                Ok(Applying::AlreadyThere)
            } else {
                Err(Failed::Other(MigrateError::Changed(ctx.changed(&old))))
            };
        }
        for st in statements {
            if let Err(e) = c.batch_execute(&st.text).await {
                return Err(if is_lock(&e) {
                    Failed::Lock(Some(st.clone()))
                } else {
                    Failed::Other(Final(ctx.failed(st, pg_error(&e))))
                });
            }
        }
        c.execute(
            &format!(
                "INSERT INTO {TABLE} (name, phase, checksum, version) VALUES ($1, $2, $3, $4)"
            ),
            &[&ctx.name, &ctx.phase, &ctx.checksum, &ctx.version],
        )
        .await
        .map_err(|e| {
            Failed::Other(Final(format!(
                "recording {} in {TABLE}: {}",
                ctx.file,
                pg_error(&e)
            )))
        })?;
        super::crash_point(&ctx.file);
        Ok(Applying::Applied { lock_waits: 0 })
    }
    .await;
    let closing = c.batch_execute(end(result.is_ok())).await;
    match (result, closing) {
        (Ok(a), Ok(())) => Ok(a),
        (Ok(_), Err(e)) => Err(Failed::Other(Final(format!(
            "{}: committing: {}",
            ctx.file,
            pg_error(&e)
        )))),
        (Err(e), _) => Err(e),
    }
}

/// The error at the deadline: what waited, how often, and who held it.
async fn gave_up(
    c: &tokio_postgres::Client,
    ctx: &Context,
    st: Option<&SqlStatement>,
    attempts: u32,
) -> String {
    let Some(st) = st else {
        return format!(
            "{}: waited longer than lock_timeout ({}) for the migration lock, {attempts} time(s) until the deadline: another bluegreen (or `migrate contract`) is applying migrations to this database; nothing was applied",
            ctx.file,
            humantime::format_duration(ctx.timing.lock_timeout)
        );
    };
    let tables = bluegreen_core::migration::relations(&st.text, Flavor::Postgres);
    let holders = holders(c, &tables).await;
    let base = ctx.lock_wait(st, Flavor::Postgres, "a lock");
    let tried = if ctx.in_tx {
        format!(
            "{attempts} attempt(s) until the step's deadline ({}), each rolled back so live traffic could drain",
            humantime::format_duration(ctx.timing.deadline)
        )
    } else {
        "outside a transaction, it may wait until the step's deadline".to_string()
    };
    let by = if holders.is_empty() {
        String::new()
    } else {
        format!("; held by {}", holders.join("; "))
    };
    format!("{base} ({tried}){by}")
}

/// Other sessions holding a lock on `tables`: pid, state, how long their
/// transaction has run, and their last query (from `pg_stat_activity`).
async fn holders(c: &tokio_postgres::Client, tables: &[String]) -> Vec<String> {
    let sql = "SELECT DISTINCT a.pid, coalesce(a.state, ''), \
               coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0), \
               left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 120), \
               l.relation::regclass::text \
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
               WHERE l.granted AND l.locktype = 'relation' AND a.pid <> pg_backend_pid() \
               AND l.relation IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x) \
               ORDER BY a.pid";
    let tables: Vec<String> = tables.to_vec();
    match c.query(sql, &[&tables]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                format!(
                    "pid {} on {} ({}, transaction open {}s): {}",
                    r.get::<_, i32>(0),
                    r.get::<_, String>(4),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, String>(3)
                )
            })
            .collect(),
        Err(e) => vec![format!("(pg_stat_activity unreadable: {})", pg_error(&e))],
    }
}

/// Between half and all of `d`, so runners that gave up together do not
/// come back together.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX / 2);
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(400));
            assert!(
                j >= Duration::from_millis(200) && j <= Duration::from_millis(400),
                "{j:?}"
            );
        }
    }
}
