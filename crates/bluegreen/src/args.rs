//! Arguments that commands share with the CLI's parser: where the admin
//! API is, and the actions of `migrate` and `record`. At the bottom of the
//! binary, so the commands never import the parser.

use clap::Subcommand;
use std::path::PathBuf;

/// Where the CLI finds the admin API.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, env = "BLUEGREEN_ADMIN", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// Bearer token for the admin API.
    #[arg(long, env = "BLUEGREEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate(s) to trust for an `https://` admin API (its own
    /// certificate or its CA); default: the system's roots.
    #[arg(long, env = "BLUEGREEN_ADMIN_CA")]
    pub admin_ca: Option<std::path::PathBuf>,
}

/// What `bluegreen migrate` does.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Check a migrations directory as the deploy's expand step would:
    /// exit 0 clean, 1 with findings or refusals, 2 when a file's name or
    /// SQL cannot be read.
    Lint {
        /// The directory of NNNN_name.expand.sql / .contract.sql files.
        #[arg(default_value = "migrations")]
        dir: PathBuf,
        /// The SQL the files are written in.
        #[arg(long, value_enum, default_value = "postgres")]
        dialect: Dialect,
        /// Also compare with the database this environment variable points
        /// to (read only), as the deploy does: an applied file that changed
        /// is refused, applied files are not judged again.
        #[arg(long, value_name = "ENV")]
        database_url_env: Option<String>,
    },
    /// Every migration file of the router's [deploy.migrations]: applied
    /// (by which release, when) or pending, per phase; and the last contract.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Run the live release's contract files now (the pipeline runs them by
    /// itself once the old side is stopped after the bake and keep_warm).
    /// Afterwards rollback to a release from before is refused.
    Contract {
        #[command(flatten)]
        admin: AdminArgs,
        /// Even while the old side still runs (dangerous: rollback to it
        /// would meet a schema it cannot use).
        #[arg(long)]
        force: bool,
    },
}

/// SQL dialects `migrate lint` parses.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

#[derive(Debug, Subcommand)]
pub enum RecordAction {
    /// Start writing live requests to a new file NAME (one JSON object per line).
    Start {
        /// A new file in the router's `[record] dir` (default
        /// `STATE_DIR/records`): a plain name, never a path.
        #[arg(long, value_name = "NAME")]
        to: String,
        /// Share of live requests recorded, in percent.
        #[arg(long, default_value_t = 100.0)]
        percent: f64,
        /// Stop by itself after this many bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Leave out request bodies larger than this many bytes.
        #[arg(long)]
        max_body: Option<usize>,
        /// Header whose value is redacted (repeatable; replaces the default
        /// authorization, proxy-authorization, cookie, set-cookie).
        #[arg(long)]
        redact: Vec<String>,
    },
    /// Stop recording; the file is complete when this returns.
    Stop,
    /// The recording in progress.
    Status,
}
