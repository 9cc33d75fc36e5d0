//! `bluegreen migrate`: `lint` checks a migrations directory before anything
//! runs (the files' names, and that every expand file holds only what the
//! running (old) version can live with); `status` and `contract` ask the
//! router, which holds the database URL and the release history.

use super::*;
use crate::cli::Dialect;
use bluegreen_core::migration::{lint_expand, scan, Flavor, Phase};

/// `bluegreen migrate lint [DIR]`: exit 0 when clean, 1 with a finding per
/// statement an expand file must not run, 2 when a name or a statement
/// cannot be read.
pub fn lint(dir: &Path, dialect: Dialect) -> anyhow::Result<ExitCode> {
    let flavor = match dialect {
        Dialect::Postgres => Flavor::Postgres,
        Dialect::Sqlite => Flavor::Sqlite,
    };
    let files = match scan(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let (mut findings, mut broken) = (0, 0);
    for f in &files {
        let sql = std::fs::read_to_string(&f.path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.path.display()))?;
        match (f.phase, lint_expand(&f.path, &sql, flavor)) {
            (_, Err(e)) => {
                eprintln!("error: {e}");
                broken += 1;
            }
            (Phase::Expand, Ok(found)) => {
                for x in &found {
                    outln!("{x}\n")?;
                }
                findings += found.len();
            }
            // A contract file may do anything: it runs once nothing old is left.
            (Phase::Contract, Ok(_)) => {}
        }
    }
    let expand = files.iter().filter(|f| f.phase == Phase::Expand).count();
    outln!(
        "{} file(s) in {} ({expand} expand, {} contract): {}",
        files.len(),
        dir.display(),
        files.len() - expand,
        match (findings, broken) {
            (0, 0) => "ok".to_string(),
            (n, 0) => format!("{n} statement(s) the running version cannot live with"),
            (_, b) => format!("{b} file(s) that do not parse"),
        }
    )?;
    Ok(ExitCode::from(match (findings, broken) {
        (_, b) if b > 0 => EXIT_CONFIG,
        (0, _) => 0,
        _ => EXIT_ERROR,
    }))
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
