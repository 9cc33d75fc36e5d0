//! The database side of migrations: PostgreSQL (tokio-postgres) or SQLite
//! (rusqlite, on a blocking thread), our tracking table, and one file
//! applied in one transaction together with its row in that table, so a
//! crash (even `kill -9`) leaves the file either applied and recorded or
//! not applied at all.

use super::MigrateError::{self, Database, Failed};
use bluegreen_core::config::migrations::{DatabaseUrl, Timing};
use bluegreen_core::migration::{relations, Flavor, SqlStatement};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Our table: one row per applied file.
pub const TABLE: &str = "bluegreen_migrations";

/// Key of the PostgreSQL advisory lock held while a file is applied, so
/// two routers (or a router and `migrate contract`) never apply one file twice.
pub(super) const ADVISORY_KEY: i64 = 0x0062_6c75_6567_726e;

/// A row of the tracking table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// `0002_add_title`.
    pub name: String,
    pub phase: String,
    pub checksum: String,
    /// The release whose deploy (or `migrate contract`) applied it.
    pub version: String,
    pub applied_at: String,
}

/// An open connection.
pub enum Db {
    Postgres(tokio_postgres::Client),
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

/// What applying one file did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applying {
    /// Applied, after this many attempts that waited longer than
    /// lock_timeout (each rolled back, so live traffic could drain).
    Applied { lock_waits: u32 },
    /// Another runner applied it meanwhile (same checksum).
    AlreadyThere,
}

impl Db {
    /// Connects within `limit`. Without `create`, a SQLite file that does
    /// not exist is an error (a typo must not start an empty database).
    pub async fn connect(
        url: &DatabaseUrl,
        limit: Duration,
        create: bool,
    ) -> Result<Db, MigrateError> {
        match url {
            DatabaseUrl::Postgres(u) => {
                let connecting = tokio_postgres::connect(u, tokio_postgres::NoTls);
                let (client, connection) = tokio::time::timeout(limit, connecting)
                    .await
                    .map_err(|_| Database(format!("PostgreSQL did not answer within {limit:?}")))?
                    .map_err(|e| {
                        Database(format!("cannot connect to PostgreSQL: {}", pg_error(&e)))
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "PostgreSQL connection ended");
                    }
                });
                Ok(Db::Postgres(client))
            }
            DatabaseUrl::Sqlite(path) => {
                let path = path.clone();
                let conn = tokio::task::spawn_blocking(move || {
                    use rusqlite::OpenFlags;
                    let mut flags = OpenFlags::default();
                    if !create {
                        flags.remove(OpenFlags::SQLITE_OPEN_CREATE);
                    }
                    rusqlite::Connection::open_with_flags(&path, flags).map_err(|e| {
                        Database(format!(
                            "cannot open SQLite database {}: {e}",
                            path.display()
                        ))
                    })
                })
                .await
                .map_err(|e| Database(e.to_string()))??;
                Ok(Db::Sqlite(Arc::new(Mutex::new(conn))))
            }
        }
    }

    pub fn flavor(&self) -> Flavor {
        match self {
            Db::Postgres(_) => Flavor::Postgres,
            Db::Sqlite(_) => Flavor::Sqlite,
        }
    }

    /// Every row of the tracking table; with `create` it is created when
    /// missing, without it a missing table has no rows (reading changes
    /// nothing, and works for a read-only user).
    pub async fn applied(&self, create: bool) -> Result<Vec<Applied>, MigrateError> {
        if !create && !self.has_table().await? {
            return Ok(Vec::new());
        }
        match self {
            Db::Postgres(c) => {
                c.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (name text NOT NULL, phase text NOT NULL, \
                     checksum text NOT NULL, version text NOT NULL, \
                     applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, phase))"
                ))
                .await
                .map_err(|e| Database(format!("creating {TABLE}: {}", pg_error(&e))))?;
                let rows = c
                    .query(
                        &format!("SELECT name, phase, checksum, version, applied_at::text FROM {TABLE} ORDER BY name, phase"),
                        &[],
                    )
                    .await
                    .map_err(|e| Database(format!("reading {TABLE}: {}", pg_error(&e))))?;
                Ok(rows
                    .iter()
                    .map(|r| Applied {
                        name: r.get(0),
                        phase: r.get(1),
                        checksum: r.get(2),
                        version: r.get(3),
                        applied_at: r.get(4),
                    })
                    .collect())
            }
            Db::Sqlite(conn) => {
                let conn = conn.clone();
                blocking(move || {
                    let conn = conn.lock().unwrap_or_else(|x| x.into_inner());
                    conn.execute_batch(&format!(
                        "CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT NOT NULL, phase TEXT NOT NULL, \
                         checksum TEXT NOT NULL, version TEXT NOT NULL, \
                         applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
                         PRIMARY KEY (name, phase))"
                    ))
                    .map_err(|e| Database(format!("creating {TABLE}: {e}")))?;
                    let mut st = conn
                        .prepare(&format!("SELECT name, phase, checksum, version, applied_at FROM {TABLE} ORDER BY name, phase"))
                        .map_err(|e| Database(format!("reading {TABLE}: {e}")))?;
                    let rows = st
                        .query_map([], |r| {
                            Ok(Applied {
                                name: r.get(0)?,
                                phase: r.get(1)?,
                                checksum: r.get(2)?,
                                version: r.get(3)?,
                                applied_at: r.get(4)?,
                            })
                        })
                        .map_err(|e| Database(format!("reading {TABLE}: {e}")))?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Database(format!("reading {TABLE}: {e}")))
                })
                .await
            }
        }
    }

    async fn has_table(&self) -> Result<bool, MigrateError> {
        match self {
            Db::Postgres(c) => c
                .query_one(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"), &[])
                .await
                .map(|r| r.get::<_, bool>(0))
                .map_err(|e| Database(pg_error(&e))),
            Db::Sqlite(conn) => {
                let conn = conn.clone();
                blocking(move || {
                    let conn = conn.lock().unwrap_or_else(|x| x.into_inner());
                    conn.query_row(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                        [TABLE],
                        |r| r.get::<_, i64>(0),
                    )
                    .map(|n| n > 0)
                    .map_err(|e| Database(e.to_string()))
                })
                .await
            }
        }
    }

    /// Something that stops the statement running now (an abort).
    pub fn canceller(&self) -> Canceller {
        match self {
            Db::Postgres(c) => Canceller::Postgres(c.cancel_token()),
            Db::Sqlite(conn) => Canceller::Sqlite(
                conn.lock()
                    .unwrap_or_else(|x| x.into_inner())
                    .get_interrupt_handle(),
            ),
        }
    }
}

/// Stops a running statement from another task; its file's transaction
/// is then rolled back.
pub enum Canceller {
    Postgres(tokio_postgres::CancelToken),
    Sqlite(rusqlite::InterruptHandle),
}

impl Canceller {
    pub async fn cancel(&self) {
        match self {
            Canceller::Postgres(t) => {
                let _ = t.cancel_query(tokio_postgres::NoTls).await;
            }
            Canceller::Sqlite(h) => h.interrupt(),
        }
    }
}

/// Plain queries, for apps built on this (the demo app's `/items`).
impl Db {
    /// The first column of every row, as text (NULL as `None`).
    pub async fn texts(&self, sql: &str) -> Result<Vec<Option<String>>, MigrateError> {
        match self {
            Db::Postgres(c) => c
                .query(sql, &[])
                .await
                .map_err(|e| Database(pg_error(&e)))?
                .iter()
                .map(|r| {
                    r.try_get::<_, Option<String>>(0)
                        .map_err(|e| Database(e.to_string()))
                })
                .collect(),
            Db::Sqlite(conn) => {
                let (conn, sql) = (conn.clone(), sql.to_string());
                blocking(move || {
                    let conn = conn.lock().unwrap_or_else(|x| x.into_inner());
                    let mut st = conn.prepare(&sql).map_err(|e| Database(e.to_string()))?;
                    let rows = st
                        .query_map([], |r| r.get::<_, Option<String>>(0))
                        .map_err(|e| Database(e.to_string()))?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Database(e.to_string()))
                })
                .await
            }
        }
    }

    /// Runs `sql` with one text parameter (`$1` on PostgreSQL, `?1` on
    /// SQLite); the rows changed.
    pub async fn execute(&self, sql: &str, param: &str) -> Result<u64, MigrateError> {
        match self {
            Db::Postgres(c) => c
                .execute(sql, &[&param])
                .await
                .map_err(|e| Database(pg_error(&e))),
            Db::Sqlite(conn) => {
                let (conn, sql, param) = (conn.clone(), sql.to_string(), param.to_string());
                blocking(move || {
                    let conn = conn.lock().unwrap_or_else(|x| x.into_inner());
                    conn.execute(&sql, [param])
                        .map(|n| n as u64)
                        .map_err(|e| Database(e.to_string()))
                })
                .await
            }
        }
    }

    /// False once the connection broke (the next caller reconnects).
    pub fn is_open(&self) -> bool {
        match self {
            Db::Postgres(c) => !c.is_closed(),
            Db::Sqlite(_) => true,
        }
    }
}

/// How long a step's statements may wait and run, and its abort.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timing: Timing,
    /// The step's deadline: lock waits are retried until then.
    pub deadline: tokio::time::Instant,
    pub cancel: tokio_util::sync::CancellationToken,
}

/// What every message about one file needs.
pub(super) struct Context {
    pub file: String,
    pub name: String,
    pub phase: &'static str,
    pub checksum: String,
    pub version: String,
    pub timing: Timing,
    /// The step's deadline: lock waits are retried until then.
    pub deadline: tokio::time::Instant,
    /// An abort: no attempt after it.
    pub cancel: tokio_util::sync::CancellationToken,
    /// False for a file PostgreSQL cannot run in a transaction.
    pub in_tx: bool,
}

impl Context {
    pub(super) fn failed(&self, st: &SqlStatement, why: String) -> String {
        let outcome = if self.in_tx {
            format!(
                "nothing of {} was applied (its transaction was rolled back)",
                self.file
            )
        } else {
            format!(
                "{} ran outside a transaction (PostgreSQL cannot run it in one): an index it left INVALID must be dropped before the next attempt (use IF NOT EXISTS / IF EXISTS to make it repeatable)",
                self.file
            )
        };
        format!(
            "{}:{}: {}: {why}; {outcome}",
            self.file,
            st.line,
            one_line(&st.text)
        )
    }

    pub(super) fn lock_wait(&self, st: &SqlStatement, flavor: Flavor, what: &str) -> String {
        let tables = relations(&st.text, flavor);
        let on = if tables.is_empty() {
            what.to_string()
        } else {
            format!("a lock on {}", tables.join(", "))
        };
        self.failed(
            st,
            format!(
                "waited longer than lock_timeout ({}) for {on}, held by another session (a long transaction or a running query); live traffic would queue behind this statement, so it gave up",
                humantime::format_duration(self.timing.lock_timeout)
            ),
        )
    }

    pub(super) fn changed(&self, old: &str) -> String {
        format!(
            "{} was applied with checksum {} and now has {}: an applied migration must not change; undo the edit and put the change in a new file",
            self.file,
            short(old),
            short(&self.checksum)
        )
    }
}

pub(super) fn apply_sqlite(
    conn: &rusqlite::Connection,
    ctx: &Context,
    statements: &[SqlStatement],
) -> Result<Applying, MigrateError> {
    let busy = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    };
    conn.busy_timeout(ctx.timing.lock_timeout)
        .map_err(|e| Failed(format!("{}: {e}", ctx.file)))?;
    // IMMEDIATE: the write lock is taken (or waited for) here, before any
    // statement runs.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Err(Failed(if busy(&e) {
            format!(
                "{}: waited longer than lock_timeout ({}) for the database's write lock, held by another connection; nothing was applied",
                ctx.file,
                humantime::format_duration(ctx.timing.lock_timeout)
            )
        } else {
            format!("{}: starting: {e}", ctx.file)
        }));
    }
    let result = (|| {
        let old: Option<String> = conn
            .query_row(
                &format!("SELECT checksum FROM {TABLE} WHERE name = ?1 AND phase = ?2"),
                [&ctx.name, ctx.phase],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(Database(format!("reading {TABLE}: {e}"))),
            })?;
        if let Some(old) = old {
            return if old == ctx.checksum {
                Ok(Applying::AlreadyThere)
            } else {
                Err(MigrateError::Changed(ctx.changed(&old)))
            };
        }
        for st in statements {
            if let Err(e) = conn.execute_batch(&st.text) {
                return Err(Failed(if busy(&e) {
                    ctx.lock_wait(st, Flavor::Sqlite, "the database's lock")
                } else {
                    ctx.failed(st, e.to_string())
                }));
            }
        }
        conn.execute(
            &format!(
                "INSERT INTO {TABLE} (name, phase, checksum, version) VALUES (?1, ?2, ?3, ?4)"
            ),
            [&ctx.name, ctx.phase, &ctx.checksum, &ctx.version],
        )
        .map_err(|e| Failed(format!("recording {} in {TABLE}: {e}", ctx.file)))?;
        super::crash_point(&ctx.file);
        Ok(Applying::Applied { lock_waits: 0 })
    })();
    let closing = conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
    match (result, closing) {
        (Ok(a), Ok(())) => Ok(a),
        (Ok(_), Err(e)) => {
            // A COMMIT that failed (busy) leaves the transaction open.
            let _ = conn.execute_batch("ROLLBACK");
            Err(Failed(format!(
                "{}: committing: {e}; nothing was applied",
                ctx.file
            )))
        }
        (Err(e), _) => Err(e),
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MigrateError> + Send + 'static,
) -> Result<T, MigrateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Database(e.to_string()))?
}

/// PostgreSQL's own words: severity, code, message, detail and hint.
pub(super) fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => bluegreen_core::error_chain(e),
    }
}

fn one_line(s: &str) -> String {
    let one = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

pub(super) fn short(checksum: &str) -> &str {
    &checksum[..checksum.len().min(12)]
}
