//! Command-line interface: what each subcommand takes, and dispatch.

use crate::client::{self, replay};
use crate::logging::LogFormat;
use crate::server::serve;
use crate::{app, demo};
use bluegreen_core::Side;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crate::args::{AdminArgs, MigrateAction, RecordAction};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "bluegreen",
    version,
    about = "Zero-downtime blue-green releases for HTTP services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "BLUEGREEN_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router and its admin API.
    Serve {
        #[arg(
            short,
            long,
            default_value = "bluegreen.toml",
            env = "BLUEGREEN_CONFIG"
        )]
        config: PathBuf,
    },
    /// Validate a config file; exits non-zero with every problem listed.
    /// With `[state.etcd]` it also reports etcd: reachable, its revision and
    /// database size, and who compacts its history (a warning when nothing).
    Check {
        #[arg(
            short,
            long,
            default_value = "bluegreen.toml",
            env = "BLUEGREEN_CONFIG"
        )]
        config: PathBuf,
    },
    /// Show which side is live and the health of every upstream.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the status as one JSON document (with --watch: JSON lines,
        /// one `{"event": NAME, "data": ...}` per change).
        #[arg(long)]
        json: bool,
        /// Keep following: the status again after every switch, health
        /// change and deploy step, as they happen (the event stream).
        #[arg(long, short)]
        watch: bool,
        /// With --watch: stop after this long (e.g. 5m).
        #[arg(long, value_parser = parse_duration, requires = "watch")]
        timeout: Option<std::time::Duration>,
    },
    /// Switch live traffic atomically to the other (or the named) side.
    Switch {
        #[command(flatten)]
        admin: AdminArgs,
        /// Side to make live; defaults to the idle side.
        #[arg(long, value_parser = parse_side)]
        to: Option<Side>,
        /// Switch even if the target side has no healthy upstream.
        #[arg(long)]
        force: bool,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Print the answer as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Restart the router without dropping a request: a new process (this
    /// binary again, or --binary) takes over the listening sockets and the
    /// state, and the old one drains and exits. Also SIGUSR2.
    Upgrade {
        #[command(flatten)]
        admin: AdminArgs,
        /// The binary to start (default: the running one's path).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// How long the new process may take to say it is ready; past it,
        /// it is stopped and nothing changes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        ready_timeout: std::time::Duration,
        /// Print the answer as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Read the config file again and apply what can change live (upstream
    /// lists, health, timeouts and limits, deploy and shadow settings,
    /// certificates); lists what changed and what needs `bluegreen upgrade`.
    /// A config with any problem changes nothing (exit 2). Also SIGHUP.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the answer as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Hold new live requests (in-flight ones finish) until `resume`: for a
    /// short migration that old and new versions cannot share. Each waits at
    /// most --timeout, at most --limit at once; past either, 503 with
    /// Retry-After.
    Pause {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long, default_value = "30s")]
        timeout: String,
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Send a share of the live clients (always the same ones, by
    /// proxy.sticky_header / sticky_cookie, else their address) to the idle
    /// side: a canary step by hand. 0 ends the split; a switch ends it too.
    Weight {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(value_parser = parse_side)]
        side: Side,
        /// Percent of clients, 0 to below 100.
        percent: f64,
        /// Even if that side has no healthy upstream.
        #[arg(long)]
        force: bool,
    },
    /// Print a link that, opened on the live listener (your real hostname),
    /// shows that browser the idle side until it expires (needs [sessions]).
    PreviewLink {
        #[command(flatten)]
        admin: AdminArgs,
        /// How long the link works, e.g. 1h.
        #[arg(long = "for", default_value = "1h")]
        valid_for: String,
    },
    /// Release the held requests, in the order they came.
    Resume {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Several nodes: stop listing a LOST node (one gone for good).
    ClusterForget {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's name, as `status` lists it.
        node: String,
    },
    /// `[[notify]]` hooks: `notify test NAME` sends a sample notice to one
    /// hook now and prints what it answered.
    Notify {
        #[command(flatten)]
        admin: AdminArgs,
        /// `test`.
        #[arg(value_parser = ["test"])]
        action: String,
        /// The hook's name (`[[notify]] name`).
        hook: String,
    },
    /// Maintenance mode: the live listener answers 503 with a message (JSON
    /// for clients that ask for it); preview and health checks unaffected.
    Maintenance {
        #[command(flatten)]
        admin: AdminArgs,
        /// on or off
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        message: Option<String>,
        /// Seconds for Retry-After.
        #[arg(long, default_value_t = 120)]
        retry_after: u32,
    },
    /// Switch back to the side that was live before the last switch.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        /// Roll back even if that side has no healthy upstream, with
        /// --to-version to a version a deploy rejected, and (dangerous) to a
        /// release from before the last contract migration.
        #[arg(long)]
        force: bool,
        /// Go back to this version: an instant switch when the idle side runs
        /// it, else a re-deploy of it to the idle side.
        #[arg(long, value_name = "VERSION")]
        to_version: Option<String>,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Print the answer as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Release VERSION: deploy to the idle side, health gate, smoke tests,
    /// gate, switch, bake (auto rollback), decommission. Exit codes: 0
    /// succeeded, 1 failed (live side untouched), 3 rolled back, 4 aborted.
    Deploy {
        #[command(flatten)]
        admin: AdminArgs,
        /// The version to release (passed to hooks and run commands as
        /// {version}); not with --follow.
        #[arg(required_unless_present = "follow", conflicts_with = "follow")]
        version: Option<String>,
        /// Follow a deploy already started (the current one, or ID) to its
        /// end instead of starting one: after --detach, a closed terminal
        /// or from another machine.
        #[arg(
            long,
            value_name = "ID",
            num_args = 0..=1,
            default_missing_value = "0",
            conflicts_with_all = ["manual_promote", "skip_smoke", "skip_shadow", "accept_inconclusive", "canary", "env", "reason", "detach"]
        )]
        follow: Option<u64>,
        /// Stop following after this long (e.g. 10m); the deploy goes on
        /// (exit 6 says so, with how to follow it again).
        #[arg(long, value_parser = parse_duration, conflicts_with = "detach")]
        timeout: Option<std::time::Duration>,
        /// Wait at the gate for `bluegreen promote` before switching.
        #[arg(long)]
        manual_promote: bool,
        /// Skip the smoke tests (recorded in the history).
        #[arg(long)]
        skip_smoke: bool,
        /// Skip the shadow step (recorded in the history).
        #[arg(long)]
        skip_shadow: bool,
        /// Let a bake or canary share that saw too little traffic to judge
        /// pass anyway (recorded in the history); without it, it fails or
        /// holds (deploy.bake.on_inconclusive).
        #[arg(long)]
        accept_inconclusive: bool,
        /// Canary shares in percent before the switch, e.g. 1,10,50: each is
        /// judged against the old side's traffic of the same minutes; a
        /// breach sends everyone back at once.
        #[arg(long, value_delimiter = ',')]
        canary: Vec<f64>,
        /// How long each canary share runs.
        #[arg(long, default_value = "5m")]
        step: String,
        /// Extra environment for the hook or the app processes, KEY=VALUE.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Start the deploy and return at once.
        #[arg(long)]
        detach: bool,
        /// JSON lines instead of the step list: `{"event": "step", "deploy",
        /// "step", "state", "duration_ms", "detail"}` per step change, then
        /// `{"event": "end", "deploy", "outcome", "reason", "breach"}`.
        #[arg(long)]
        json: bool,
    },
    /// Let a deploy waiting at the manual gate switch.
    Promote {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop the running deploy; the live side stays (or goes back to) what it
    /// was before the deploy.
    Abort {
        #[command(flatten)]
        admin: AdminArgs,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Every deploy: version, sides, steps with durations, result, reason.
    History {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the answer as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Database migrations: `lint` runs the deploy's own check (every file
    /// takes only locks live traffic can bear, every expand file
    /// (NNNN_name.expand.sql) holds only changes the running version can
    /// live with), naming file, line, statement, rule and the safe way.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Record live traffic to a file (for `replay`).
    Record {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: RecordAction,
    },
    /// Mirror live traffic to the idle side and compare the answers.
    Shadow {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: crate::client::shadow::ShadowAction,
    },
    /// Send recorded requests again (cache warming, load tests), keeping
    /// their timing scaled by --speed; prints a summary.
    Replay(replay::ReplayArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) generated from this CLI; it refers to one
    /// page per subcommand (bluegreen-deploy(1), ...), which --dir writes.
    Man {
        /// Write every page (bluegreen.1 and one per subcommand, e.g.
        /// bluegreen-deploy.1) into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run a self-contained demo: release v1, then v2 under live traffic, and
    /// with --broken a v3 that the bake rolls back; every response counted.
    Demo(demo::DemoArgs),
    /// A tiny demo upstream app (what `demo` runs as blue and green).
    App(app::AppArgs),
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 30s, 10m): {e}"))
}

fn parse_side(s: &str) -> Result<Side, String> {
    s.parse::<Side>().map_err(|e| e.to_string())
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve::main(&config),
        Command::Check { config } => Ok(client::check(&config)),
        Command::Status {
            admin,
            json,
            watch: true,
            timeout,
        } => client_runtime()?.block_on(client::watch(&admin, json, timeout)),
        Command::Status { admin, json, .. } => {
            client_runtime()?.block_on(client::status(&admin, json))
        }
        Command::Switch {
            admin,
            to,
            force,
            reason,
            json,
        } => client_runtime()?.block_on(client::switch(&admin, to, force, reason, json)),
        Command::Pause {
            admin,
            timeout,
            limit,
        } => client_runtime()?.block_on(client::pause(&admin, timeout, limit)),
        Command::Weight {
            admin,
            side,
            percent,
            force,
        } => client_runtime()?.block_on(client::weight(&admin, side, percent, force)),
        Command::PreviewLink { admin, valid_for } => {
            client_runtime()?.block_on(client::preview_link(&admin, valid_for))
        }
        Command::Resume { admin } => client_runtime()?.block_on(client::resume(&admin)),
        Command::ClusterForget { admin, node } => {
            client_runtime()?.block_on(client::cluster_forget(&admin, &node))
        }
        Command::Notify { admin, hook, .. } => {
            client_runtime()?.block_on(client::notify_test(&admin, &hook))
        }
        Command::Maintenance {
            admin,
            state,
            message,
            retry_after,
        } => client_runtime()?.block_on(client::maintenance(
            &admin,
            state == "on",
            message,
            retry_after,
        )),
        Command::Reload { admin, json } => client_runtime()?.block_on(client::reload(&admin, json)),
        Command::Upgrade {
            admin,
            binary,
            ready_timeout,
            json,
        } => client_runtime()?.block_on(client::upgrade(&admin, binary, ready_timeout, json)),
        Command::Rollback {
            admin,
            force,
            to_version,
            reason,
            json,
        } => client_runtime()?.block_on(client::rollback(&admin, force, to_version, reason, json)),
        Command::Deploy {
            admin,
            json,
            follow: Some(id),
            timeout,
            ..
        } => client_runtime()?.block_on(client::follow_again(
            &admin,
            (id != 0).then_some(id),
            json,
            timeout,
        )),
        Command::Deploy {
            admin,
            version,
            manual_promote,
            skip_smoke,
            skip_shadow,
            accept_inconclusive,
            canary,
            step,
            env,
            reason,
            detach,
            json,
            timeout,
            ..
        } => client_runtime()?.block_on(client::deploy(
            &admin,
            client::DeployArgs {
                version: version.unwrap_or_default(),
                timeout,
                manual_promote,
                skip_smoke,
                skip_shadow,
                accept_inconclusive,
                canary,
                step,
                env: env.into_iter().collect(),
                reason,
                detach,
                json,
            },
        )),
        Command::Promote { admin } => client_runtime()?.block_on(client::promote(&admin)),
        Command::Abort { admin, reason } => {
            client_runtime()?.block_on(client::abort(&admin, reason))
        }
        Command::Migrate {
            action:
                MigrateAction::Lint {
                    dir,
                    dialect,
                    database_url_env,
                },
        } => client_runtime()?.block_on(client::migrate::lint(
            &dir,
            dialect,
            database_url_env.as_deref(),
        )),
        Command::Migrate {
            action: MigrateAction::Status { admin, json },
        } => client_runtime()?.block_on(client::migrate::status(&admin, json)),
        Command::Migrate {
            action: MigrateAction::Contract { admin, force },
        } => client_runtime()?.block_on(client::migrate::contract(&admin, force)),
        Command::History { admin, json } => {
            client_runtime()?.block_on(client::history(&admin, json))
        }
        Command::Record { admin, action } => {
            client_runtime()?.block_on(client::record(&admin, action))
        }
        Command::Shadow { admin, action } => {
            client_runtime()?.block_on(crate::client::shadow::main(&admin, action))
        }
        Command::Replay(args) => client_runtime()?.block_on(replay::main(args)),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a failed write.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "bluegreen", &mut script);
            crate::out::bytes(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(man_command(), &dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(man_command()).render(&mut page)?;
            crate::out::bytes(&page)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::main(args),
        Command::App(args) => app::main(args),
    }
}

/// The CLI as the man pages show it: without clap's `help` subcommand,
/// which has no page (`generate_to` leaves it out too).
fn man_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().disable_help_subcommand(true)
}

fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
