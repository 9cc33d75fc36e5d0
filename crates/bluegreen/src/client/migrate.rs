//! `bluegreen migrate`: `lint` checks a migrations directory before anything
//! runs (the files' names, and that every expand file holds only what the
//! running (old) version can live with); `status` and `contract` ask the
//! router, which holds the database URL and the release history.

use super::*;
use crate::args::Dialect;
use bluegreen_core::migration::{Flavor, Phase, Problem};
use bluegreen_pipeline::migrate::{self, MigrateError};

/// `bluegreen migrate lint [DIR]`: the check the deploy's expand step runs
/// (`migrate::check`), before anything runs. Exit 0 when clean, 1 with a
/// finding or a refusal, 2 when a name or a file cannot be read. With
/// `database_url_env`, what that database applied counts as the deploy
/// counts it: applied files that changed are refused, the others are not
/// judged again.
pub async fn lint(
    dir: &Path,
    dialect: Dialect,
    database_url_env: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut flavor = match dialect {
        Dialect::Postgres => Flavor::Postgres,
        Dialect::Sqlite => Flavor::Sqlite,
    };
    let dir_owned = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || migrate::load_blocking(&dir_owned)).await?;
    let files = match loaded {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let applied = match database_url_env {
        None => Vec::new(),
        Some(env) => match applied(env).await {
            Ok((f, rows)) => {
                flavor = f;
                rows
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    let problems = migrate::check(&files, &applied, flavor);
    let (mut findings, mut broken) = (0, 0);
    for p in &problems {
        match p {
            Problem::Broken(e) => {
                eprintln!("error: {e}");
                broken += 1;
            }
            other => {
                outln!("{other}\n")?;
                findings += 1;
            }
        }
    }
    let expand = files
        .iter()
        .filter(|f| f.file.phase == Phase::Expand)
        .count();
    outln!(
        "{} file(s) in {} ({expand} expand, {} contract{}): {}",
        files.len(),
        dir.display(),
        files.len() - expand,
        if database_url_env.is_some() {
            format!(", {} applied", applied.len())
        } else {
            String::new()
        },
        match (findings, broken) {
            (0, 0) => "ok".to_string(),
            (n, 0) => format!("{n} problem(s): the deploy would refuse these files"),
            (_, b) => format!("{b} file(s) that do not parse"),
        }
    )?;
    Ok(ExitCode::from(match (findings, broken) {
        (_, b) if b > 0 => EXIT_CONFIG,
        (0, _) => 0,
        _ => EXIT_ERROR,
    }))
}

/// The tracking table of the database `$env` points to, read only (no
/// table or file is created).
async fn applied(env: &str) -> Result<(Flavor, Vec<migrate::db::Applied>), MigrateError> {
    let url = std::env::var(env).map_err(|_| MigrateError::Setup(format!("${env} is not set")))?;
    let cwd = std::env::current_dir().map_err(|e| MigrateError::Setup(e.to_string()))?;
    let url = bluegreen_core::config::migrations::DatabaseUrl::parse(&url, env, &cwd)
        .map_err(MigrateError::Setup)?;
    let db = migrate::db::Db::connect(&url, std::time::Duration::from_secs(10), false).await?;
    Ok((db.flavor(), db.applied(false).await?))
}

/// `bluegreen migrate status`: a line per file, expand then contract.
pub async fn status(args: &AdminArgs, json: bool) -> anyhow::Result<ExitCode> {
    let v: serde_json::Value = match client(args).get("/api/v1/migrations").await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} ({})",
        v["dir"].as_str().unwrap_or("?"),
        v["runner"].as_str().unwrap_or("?")
    )?;
    let files = v["files"].as_array().cloned().unwrap_or_default();
    for phase in ["expand", "contract"] {
        let of: Vec<_> = files.iter().filter(|f| f["phase"] == phase).collect();
        let pending = of.iter().filter(|f| f["state"] == "pending").count();
        outln!("{phase}: {} file(s), {pending} pending", of.len())?;
        for f in of {
            let by = match (f["version"].as_str(), f["applied_at"].as_str()) {
                (Some(v), Some(at)) => format!("  by {v} at {at}"),
                _ => String::new(),
            };
            outln!(
                "  {:<9} {}{by}",
                f["state"].as_str().unwrap_or("?"),
                f["file"].as_str().unwrap_or("?")
            )?;
        }
    }
    if let Some(c) = v["contracted"].as_object() {
        outln!(
            "last contract: {} (deploy #{}): rollback to a release from before it is refused",
            c.get("version").and_then(|x| x.as_str()).unwrap_or("?"),
            c.get("deploy_id").unwrap_or(&serde_json::Value::Null)
        )?;
    }
    let changed = files.iter().filter(|f| f["state"] == "changed").count();
    if changed > 0 {
        outln!("{changed} applied file(s) changed since: the next expand refuses to run")?;
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// `bluegreen migrate contract [--force]`.
pub async fn contract(args: &AdminArgs, force: bool) -> anyhow::Result<ExitCode> {
    let body = bluegreen_api::types::ContractBody {
        force,
        actor: Some(actor()),
    };
    let result: Result<serde_json::Value, _> =
        client(args).post("/api/v1/migrations/contract", body).await;
    match result {
        Ok(v) => {
            outln!("{}", v["message"].as_str().unwrap_or(""))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}
