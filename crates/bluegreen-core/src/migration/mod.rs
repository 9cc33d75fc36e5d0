//! Database migrations that rollback survives and live traffic does not
//! feel: the files of a migrations directory (`NNNN_name.expand.sql`,
//! `NNNN_name.contract.sql`) and the linter that keeps every file to locks
//! live traffic can bear, and an expand file to what the running (old)
//! version can live with. Each file is parsed with a real parser of its
//! database's SQL (PostgreSQL: squawk's, with squawk's rules; SQLite:
//! sqlparser's), so a statement is judged by what it does, not by its
//! text. Pure apart from `scan`: the caller reads the files.

mod check;
pub mod postgres;
pub mod rules;
pub mod sqlite;

pub use check::{check_file, Problem};

use std::path::{Path, PathBuf};

/// The SQL the files are written in: the database's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Postgres,
    Sqlite,
}

impl Flavor {
    /// Lower-case name, as in `dialect = "…"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Postgres => "postgres",
            Flavor::Sqlite => "sqlite",
        }
    }
}

/// When a file runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the new version is deployed: additive, backward-compatible.
    Expand,
    /// Once rollback is no longer possible: the destructive part.
    Contract,
}

impl Phase {
    /// Lower-case name, as in file names and the tracking table.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

/// One migration file, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFile {
    pub number: u32,
    pub name: String,
    pub phase: Phase,
    pub path: PathBuf,
}

impl MigrationFile {
    /// `0002_add_title`: the name recorded in the tracking table (with the phase).
    pub fn id(&self) -> String {
        format!("{:04}_{}", self.number, self.name)
    }

    /// `0002_add_title.expand.sql`.
    pub fn file_name(&self) -> String {
        format!("{}.{}.sql", self.id(), self.phase.as_str())
    }
}

/// One statement of a file, as written, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStatement {
    /// 1-based.
    pub line: u64,
    pub text: String,
}

/// A statement a file must not run, and the way to do it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
    /// The statement, on one line, shortened.
    pub statement: String,
    /// squawk's rule name, or ours.
    pub rule: String,
    /// Who suffers (live traffic, or the running version) and why.
    pub why: String,
    /// The safe way (expand/contract, or the lock-friendly form).
    pub instead: String,
    /// The statement rewritten the safe way, where squawk offers one.
    pub rewrite: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}\n  {}: {}\n  instead: {}",
            self.file.display(),
            self.line,
            self.statement,
            self.rule,
            self.why,
            self.instead
        )?;
        match &self.rewrite {
            Some(r) => write!(f, "\n  rewrite: {r}"),
            None => Ok(()),
        }
    }
}

/// The files of `dir` (sorted by number, expand before contract), or what is
/// wrong with their names. Blocking: reads the directory.
pub fn scan(dir: &Path) -> Result<Vec<MigrationFile>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("migrations dir {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !file.ends_with(".sql") {
            continue;
        }
        match parse_name(file) {
            Some((number, name, phase)) => files.push(MigrationFile {
                number,
                name,
                phase,
                path,
            }),
            None => problems.push(format!(
                "{}: not a migration name: expected NNNN_name.expand.sql or NNNN_name.contract.sql",
                path.display()
            )),
        }
    }
    files.sort_by(|a, b| (a.number, a.phase, &a.name).cmp(&(b.number, b.phase, &b.name)));
    for pair in files.windows(2) {
        if pair[0].number == pair[1].number && pair[0].phase == pair[1].phase {
            problems.push(format!(
                "{} and {}: two {:?} files numbered {:04}",
                pair[0].path.display(),
                pair[1].path.display(),
                pair[0].phase,
                pair[0].number
            ));
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems.join("\n"))
    }
}

/// `0007_add_currency.expand.sql` → (7, "add_currency", Expand).
fn parse_name(file: &str) -> Option<(u32, String, Phase)> {
    let (stem, phase) = if let Some(s) = file.strip_suffix(".expand.sql") {
        (s, Phase::Expand)
    } else {
        (file.strip_suffix(".contract.sql")?, Phase::Contract)
    };
    let (digits, name) = stem.split_once('_')?;
    let ok_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || !ok_name {
        return None;
    }
    Some((digits.parse().ok()?, name.to_string(), phase))
}

/// How a file is shaped, for the runner: what runs in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub statements: Vec<SqlStatement>,
    /// The first statement that must run outside a transaction
    /// (`CREATE INDEX CONCURRENTLY` and the like).
    pub outside_transaction: Option<SqlStatement>,
    /// The first transaction-control statement (`BEGIN`, `COMMIT`, …).
    pub transaction_control: Option<SqlStatement>,
}

/// The findings of one file. Every file is held to the lock rules (live
/// traffic runs beside expand and contract alike); an expand file also to
/// what the running version can live with. A file that does not parse is
/// an error naming the file and the line.
pub fn lint(file: &Path, sql: &str, phase: Phase, flavor: Flavor) -> Result<Vec<Finding>, String> {
    match (flavor, phase) {
        (Flavor::Postgres, _) => postgres::lint(file, sql, phase),
        (Flavor::Sqlite, Phase::Expand) => sqlite::lint_expand(file, sql),
        (Flavor::Sqlite, Phase::Contract) => sqlite::lint_expand(file, sql).map(|_| Vec::new()),
    }
}

/// How a file runs: its statements as written (so what runs is exactly
/// what the file says), whether it must run outside a transaction, and
/// its first transaction-control statement.
pub fn shape(file: &Path, sql: &str, flavor: Flavor) -> Result<Shape, String> {
    match flavor {
        Flavor::Postgres => postgres::shape(file, sql),
        Flavor::Sqlite => Ok(Shape {
            statements: sqlite::split(sql).map_err(|e| format!("{}: {e}", file.display()))?,
            outside_transaction: None,
            transaction_control: sqlite::transaction_control(sql),
        }),
    }
}

/// The tables and views a statement names (to say which one a lock wait
/// was for); empty when it does not parse.
pub fn relations(sql: &str, flavor: Flavor) -> Vec<String> {
    match flavor {
        Flavor::Postgres => postgres::relations(sql),
        Flavor::Sqlite => sqlite::relations(sql),
    }
}

/// A statement on one line, at most 120 characters.
pub(crate) fn shorten(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

#[cfg(test)]
mod tests;
