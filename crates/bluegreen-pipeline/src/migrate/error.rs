//! Why migrations did not run, by kind: what the operator does next differs
//! (fix a file, fix the database's address, wait for a lock, or look at
//! what a failed file left).

/// Why a migration command or step stopped. Every message names the file,
/// the database or the setting concerned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MigrateError {
    /// The directory or a file cannot be read or parsed.
    #[error("{0}")]
    Files(String),
    /// Checked before anything ran and refused (the linter's problems,
    /// applied files changed since): nothing was applied.
    #[error("the migrations were refused before anything ran:\n{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// A file that was applied, or that the release saw, changed or is gone.
    #[error("{0}")]
    Changed(String),
    /// No database to reach here: a command runner, an unset variable, a
    /// URL that cannot be used.
    #[error("{0}")]
    Setup(String),
    /// The database cannot be reached, or its tracking table read or written.
    #[error("{0}")]
    Database(String),
    /// A file's statements failed or gave up waiting for a lock; the
    /// message says what was rolled back.
    #[error("{0}")]
    Failed(String),
    /// The deploy was aborted while migrations ran.
    #[error("aborted: {0}")]
    Aborted(Box<MigrateError>),
}
