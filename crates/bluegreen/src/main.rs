//! `bluegreen`: zero-downtime blue-green releases for HTTP services.
//!
//! Dependency direction: `bluegreen-core` (pure) ← `bluegreen-store` ←
//! `bluegreen-router` ← `bluegreen-api` ← this binary (CLI, serve, demo).
#![forbid(unsafe_code)]

#[macro_use]
mod out;

mod app;
mod args;
mod certs;
mod cli;
mod client;
mod demo;
mod exit;
mod logging;
mod server;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The demo prints its own story; routine router logs would drown it.
    let quiet = matches!(cli.command, cli::Command::Demo(_));
    logging::init(cli.log_format, cli.verbose, quiet);
    match cli::run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing to say.
        Err(e) if out::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::EXIT_ERROR)
        }
    }
}
