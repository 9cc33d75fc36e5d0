//! The client side of the binary: the subcommands that talk to a router
//! (and `check`, which reads a config): one file each for `status`,
//! `switch`/`rollback`, `deploy`/`promote`/`abort` (and following a
//! deploy), `history`, `record`, `shadow`; `replay` sends recorded traffic;
//! `progress` draws a deploy's steps. `demo` and `app` sit at the top.

mod deploy;
mod etcd;
mod history;
mod record;
mod status;
mod switch;

pub mod progress;
pub mod replay;
pub mod shadow;

pub use deploy::{abort, deploy, follow, follow_again, promote, DeployArgs};
pub use history::history;
pub mod migrate;
pub use record::record;
pub use status::{status, watch};
pub use switch::{rollback, switch};

use crate::args::AdminArgs;
use crate::client::progress::{Mode, Progress};
use crate::exit::{
    EXIT_ABORTED, EXIT_CONFIG, EXIT_ERROR, EXIT_NOT_CONVERGED, EXIT_ROLLED_BACK, EXIT_TIMEOUT,
};
use bluegreen_api::types::{AbortBody, DeployBody, RecordBody, StatusView, SwitchBody};
use bluegreen_api::AdminClient;
use bluegreen_core::config::Config;
use bluegreen_core::deploy::{DeployRecord, Outcome, SideRelease};
use bluegreen_core::health::Health;
use bluegreen_core::state::{SwitchKind, SwitchRecord};
use bluegreen_core::{Side, Sides};
use bluegreen_router::status::Status;
use bluegreen_router::SwitchOutcome;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub(crate) fn client(args: &AdminArgs) -> AdminClient {
    let ca = args.admin_ca.as_deref();
    // An empty token (`BLUEGREEN_TOKEN=`) is no token, as for `serve`.
    let token = args.token.clone().filter(|t| !t.trim().is_empty());
    match AdminClient::with_ca(&args.admin, token, actor(), ca) {
        Ok(c) => c,
        Err(e) => {
            // An unreadable --admin-ca: nothing can be asked of the router.
            eprintln!("error: {e}");
            std::process::exit(EXIT_ERROR.into())
        }
    }
}

/// Who runs this command, for the history: `BLUEGREEN_ACTOR` when set (a CI
/// job, a chat bot), else `cli:USER@HOST`.
pub(crate) fn actor() -> String {
    if let Ok(a) = std::env::var("BLUEGREEN_ACTOR") {
        if !a.trim().is_empty() {
            return a;
        }
    }
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid{}", m.uid()))
        })
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        format!("cli:{user}")
    } else {
        format!("cli:{user}@{host}")
    }
}

/// `bluegreen check`: validates a config and lists every problem.
pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) if crate::certs::certificates(&cfg, path).is_err() => ExitCode::from(EXIT_CONFIG),
        Ok(cfg) => {
            // The config is valid whether or not anyone reads this.
            let _ = outln!(
                "{}: ok (proxy {}, preview {}, admin {}, blue {} upstream(s), green {} upstream(s))",
                path.display(),
                cfg.proxy.listen,
                cfg.proxy
                    .preview_listen
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into()),
                cfg.admin.listen,
                cfg.environments.blue.upstreams.len(),
                cfg.environments.green.upstreams.len()
            );
            if let Some(e) = &cfg.state.etcd {
                etcd::report(e);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn outcome(
    result: Result<SwitchOutcome, bluegreen_api::ClientError>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match result {
        Ok(o) => {
            if as_json {
                outln!("{}", serde_json::to_string_pretty(&o)?)?;
            } else {
                outln!("{} (generation {})", o.message, o.generation)?;
            }
            // Switched, but not every node applied it in time: the
            // operator must look (`status` names them).
            let stale = o.converged.as_ref().is_some_and(|c| !c.stale.is_empty());
            Ok(if stale {
                ExitCode::from(EXIT_NOT_CONVERGED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) => fail(e),
    }
}

/// `f`, unless `deadline` comes first (`None`: it did).
pub(crate) async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, f).await.ok(),
        None => Some(f.await),
    }
}

/// JSON for people: a latency histogram shows its `buckets` (with bounds)
/// only, not the dense `counts` kept for older readers.
pub(crate) fn tidy(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.contains_key("buckets") {
                map.remove("counts");
            }
            for x in map.values_mut() {
                tidy(x);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// The router may be restarting (an upgrade): an unreachable API is
/// tried again for a minute; past that, the error.
fn out_of_patience(
    since: &mut Option<std::time::Instant>,
    e: bluegreen_api::ClientError,
) -> Option<bluegreen_api::ClientError> {
    let first = *since.get_or_insert_with(std::time::Instant::now);
    (first.elapsed() > std::time::Duration::from_secs(60)).then_some(e)
}

fn fail(e: bluegreen_api::ClientError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    // Say where the token comes from, on both ends.
    if matches!(&e, bluegreen_api::ClientError::Api { status, .. } if *status == 401) {
        // Empty counts as unset: nothing is sent.
        let env = match std::env::var_os("BLUEGREEN_TOKEN") {
            None => "not set",
            Some(t) if t.to_string_lossy().trim().is_empty() => "empty: no token sent",
            Some(_) => "set",
        };
        eprintln!(
            "hint: the CLI sends --token or BLUEGREEN_TOKEN ({env}); the router checks it against the variable named by admin.token_env (default BLUEGREEN_TOKEN) in the environment of `bluegreen serve`"
        );
    }
    Ok(ExitCode::from(match &e {
        bluegreen_api::ClientError::Api { code, .. } => crate::exit::of_api_error(code),
        _ => EXIT_ERROR,
    }))
}

/// `bluegreen upgrade`: asks the router to hand over to a new process and
/// says which serves now (exit 0), or why the old one still does (exit 1).
pub async fn upgrade(
    args: &AdminArgs,
    binary: Option<std::path::PathBuf>,
    ready_timeout: std::time::Duration,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    // An absolute path: the router resolves it, not this shell.
    let binary = match binary {
        Some(b) => Some(std::path::absolute(&b)?.display().to_string()),
        None => None,
    };
    let body = bluegreen_api::types::UpgradeBody {
        binary,
        ready_timeout: Some(humantime::format_duration(ready_timeout).to_string()),
    };
    // The router answers once the new process is ready or given up on:
    // wait past its deadline, so its own reason is what gets printed.
    let result: Result<bluegreen_api::lifecycle::Upgraded, _> = client(args)
        .with_timeout(ready_timeout + std::time::Duration::from_secs(30))
        .post("/api/v1/upgrade", body)
        .await;
    match result {
        Ok(done) if as_json => {
            outln!("{}", serde_json::to_string_pretty(&done)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(done) => {
            outln!("{}", done.message)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen reload`: the router reads its config file again; prints what
/// changed (exit 0) or every problem of the file (exit 2, nothing changed).
pub async fn reload(args: &AdminArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let result: Result<bluegreen_api::lifecycle::Reloaded, _> =
        client(args).post("/api/v1/reload", json!({})).await;
    match result {
        Ok(done) if as_json => {
            outln!("{}", serde_json::to_string_pretty(&done)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(done) => {
            outln!("{}", done.message)?;
            Ok(ExitCode::SUCCESS)
        }
        // Every problem of the file, without the HTTP status around it.
        Err(bluegreen_api::ClientError::Api { code, message, .. }) if code == "invalid_config" => {
            eprintln!("error: {message}");
            Ok(ExitCode::from(crate::exit::of_api_error(&code)))
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen pause`: new live requests wait until `resume`.
pub async fn pause(args: &AdminArgs, timeout: String, limit: usize) -> anyhow::Result<ExitCode> {
    let body = bluegreen_api::types::PauseBody {
        timeout: Some(timeout),
        limit: Some(limit),
    };
    let result: Result<serde_json::Value, _> = client(args).post("/api/v1/pause", body).await;
    match result {
        Ok(v) => {
            outln!(
                "paused: new live requests wait up to {} ms (at most {} at once); `bluegreen resume` releases them",
                v["timeout_ms"], v["limit"]
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen resume`: the held requests go, in order.
pub async fn resume(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let result: Result<serde_json::Value, _> = client(args).post("/api/v1/resume", json!({})).await;
    match result {
        Ok(v) => {
            outln!("resumed: {} held requests released", v["waiting"])?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen cluster-forget NODE`.
pub async fn cluster_forget(args: &AdminArgs, node: &str) -> anyhow::Result<ExitCode> {
    let result: Result<serde_json::Value, _> = client(args)
        .post("/api/v1/cluster/forget", json!({ "node": node }))
        .await;
    match result {
        Ok(_) => {
            outln!("node {node} is no longer listed")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen notify test NAME`: exit 0 when the hook answered 2xx.
pub async fn notify_test(args: &AdminArgs, hook: &str) -> anyhow::Result<ExitCode> {
    let result: Result<serde_json::Value, _> = client(args)
        .post("/api/v1/notify/test", json!({ "hook": hook }))
        .await;
    match result {
        Ok(v) => {
            let status = v["status"].as_u64().unwrap_or(0);
            outln!(
                "{hook} answered {status}: {}",
                v["body"].as_str().unwrap_or("").trim()
            )?;
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen maintenance on|off`.
pub async fn maintenance(
    args: &AdminArgs,
    on: bool,
    message: Option<String>,
    retry_after: u32,
) -> anyhow::Result<ExitCode> {
    let body = bluegreen_api::types::MaintenanceBody {
        on,
        message,
        retry_after: Some(retry_after),
        actor: Some(actor()),
    };
    let result: Result<serde_json::Value, _> = client(args).post("/api/v1/maintenance", body).await;
    match result {
        Ok(v) if on => {
            outln!(
                "maintenance on: the live listener answers 503 ({})",
                v["maintenance"]["message"].as_str().unwrap_or("")
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            outln!("maintenance off: live traffic reaches the app again")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen weight SIDE PERCENT`: a share of the live clients to the idle side.
pub async fn weight(
    args: &AdminArgs,
    side: Side,
    percent: f64,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let body = bluegreen_api::types::WeightBody {
        side: side.to_string(),
        percent,
        force,
    };
    let result: Result<serde_json::Value, _> = client(args).post("/api/v1/weight", body).await;
    match result {
        Ok(v) => {
            match v["split"]["basis_points"].as_u64() {
                Some(bp) => outln!(
                    "{}% of live clients now go to {side}, always the same ones",
                    bp as f64 / 100.0
                )?,
                None => outln!("no split: all live traffic goes to the live side")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen preview-link`: a link that shows one browser the idle side.
pub async fn preview_link(args: &AdminArgs, valid_for: String) -> anyhow::Result<ExitCode> {
    let result: Result<serde_json::Value, _> = client(args)
        .post("/api/v1/preview-link", json!({ "for": valid_for }))
        .await;
    match result {
        Ok(v) => {
            outln!(
                "{}\n(opens the {} side for {} s in the browser that follows it; on your own hostname use the path {})",
                v["url"].as_str().unwrap_or(""),
                v["side"].as_str().unwrap_or("idle"),
                v["expires_in_secs"],
                v["path"].as_str().unwrap_or("")
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}
