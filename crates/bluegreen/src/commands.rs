//! Client subcommands (`status`, `switch`, `rollback`) and `check`.

use crate::cli::{AdminArgs, EXIT_ABORTED, EXIT_CONFIG, EXIT_ERROR, EXIT_ROLLED_BACK};
use crate::progress::{Mode, Progress};
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
    AdminClient::new(&args.admin, args.token.clone(), actor())
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
        Ok(cfg) => {
            println!(
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `bluegreen status`.
pub async fn status(args: &AdminArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let raw: serde_json::Value = match client(args).get("/api/v1/status").await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(ExitCode::SUCCESS);
    }
    let view: StatusView = serde_json::from_value(raw)?;
    print!("{}", render_status(&view.router));
    // With a pipeline: what each side runs, and the deploy in progress.
    if let Some(rel) = &view.releases {
        out_releases(rel);
    }
    if let Some(d) = view
        .deploy
        .flatten()
        .filter(|d| d.outcome == Outcome::Running)
    {
        let step = d.next_step().map(|s| s.as_str()).unwrap_or("finishing");
        println!(
            "\ndeploy #{} of {} to {} in progress: {step}",
            d.id, d.version, d.target
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn out_releases(rel: &Sides<SideRelease>) {
    println!("\n{:<6} {:<16} STATE", "SIDE", "VERSION");
    for side in Side::ALL {
        let r = &rel[side];
        let state = match (&r.version, r.running) {
            (None, _) => "-",
            (Some(_), true) => "running",
            (Some(_), false) => "decommissioned",
        };
        println!(
            "{:<6} {:<16} {state}",
            side.as_str(),
            r.version.as_deref().unwrap_or("-")
        );
    }
}

/// `bluegreen switch`.
pub async fn switch(
    args: &AdminArgs,
    to: Option<Side>,
    force: bool,
    reason: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let body = SwitchBody {
        to: to.map(|s| s.to_string()),
        force,
        reason: Some(reason.unwrap_or_else(|| "manual switch".into())),
        ..Default::default()
    };
    outcome(client(args).post("/api/v1/switch", body).await, as_json)
}

/// `bluegreen rollback`: instant while the old side is up; otherwise the
/// router re-deploys the old version, and this follows that deploy.
pub async fn rollback(
    args: &AdminArgs,
    force: bool,
    to_version: Option<String>,
    reason: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let body = SwitchBody {
        force,
        to_version,
        reason: Some(reason.unwrap_or_else(|| "manual rollback".into())),
        ..Default::default()
    };
    let c = client(args);
    let answer: serde_json::Value = match c.post("/api/v1/rollback", body).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if let Some(d) = answer.get("redeploy").filter(|d| !d.is_null()) {
        let d: DeployRecord = serde_json::from_value(d.clone())?;
        if !as_json {
            println!("{}", answer["message"].as_str().unwrap_or_default());
        }
        return follow(&c, d.id, Mode::detect(as_json)).await;
    }
    let o: SwitchOutcome = serde_json::from_value(answer)?;
    outcome(Ok(o), as_json)
}

/// What `bluegreen deploy` asks for.
pub struct DeployArgs {
    pub version: String,
    pub manual_promote: bool,
    pub skip_smoke: bool,
    pub skip_shadow: bool,
    pub env: BTreeMap<String, String>,
    pub reason: Option<String>,
    pub detach: bool,
    pub json: bool,
}

/// `bluegreen deploy`: starts the deploy, then follows it to the end.
pub async fn deploy(args: &AdminArgs, d: DeployArgs) -> anyhow::Result<ExitCode> {
    let c = client(args);
    let body = DeployBody {
        version: d.version.clone(),
        manual_promote: d.manual_promote,
        skip_smoke: d.skip_smoke,
        skip_shadow: d.skip_shadow,
        env: d.env.clone(),
        reason: d.reason.clone(),
        actor: None,
    };
    let record: DeployRecord = match c.post("/api/v1/deploys", body).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if d.detach {
        if d.json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            println!(
                "deploy #{} of {} to {} started",
                record.id, record.version, record.target
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(&c, record.id, Mode::detect(d.json)).await
}

/// Polls a deploy until it ends, showing progress; the exit code says how it ended.
pub async fn follow(c: &AdminClient, id: u64, mode: Mode) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new(mode);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        match c
            .get::<DeployRecord>(&format!("/api/v1/deploys/{id}"))
            .await
        {
            Ok(d) => {
                unreachable_since = None;
                if d.is_finished() {
                    progress.finish(&d);
                    return Ok(ExitCode::from(exit_code(d.outcome)));
                }
                progress.update(&d);
            }
            // The router may be restarting; its deploy resumes, so keep watching a while.
            Err(e @ bluegreen_api::ClientError::Unreachable { .. }) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    return fail(e);
                }
            }
            Err(e) => return fail(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exit_code(o: Outcome) -> u8 {
    match o {
        Outcome::Succeeded | Outcome::Running => 0,
        Outcome::Failed => EXIT_ERROR,
        Outcome::RolledBack => EXIT_ROLLED_BACK,
        Outcome::Aborted => EXIT_ABORTED,
    }
}

/// `bluegreen promote`.
pub async fn promote(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    match client(args)
        .post::<DeployRecord>("/api/v1/promote", json!({}))
        .await
    {
        Ok(d) => {
            println!(
                "deploy #{} ({}) promoted: switching to {}",
                d.id, d.version, d.target
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen abort`.
pub async fn abort(args: &AdminArgs, reason: Option<String>) -> anyhow::Result<ExitCode> {
    match client(args)
        .post::<DeployRecord>(
            "/api/v1/abort",
            AbortBody {
                reason,
                actor: None,
            },
        )
        .await
    {
        Ok(d) => {
            println!(
                "aborting deploy #{} ({}); {} stays live",
                d.id, d.version, d.from
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `bluegreen history`.
pub async fn history(args: &AdminArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let c = client(args);
    let (deploys, switches) = match (
        c.get::<serde_json::Value>("/api/v1/deploys").await,
        c.get::<serde_json::Value>("/api/v1/history").await,
    ) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    if as_json {
        let mut all = deploys.clone();
        all["switches"] = switches["switches"].clone();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let deploys: Vec<DeployRecord> = serde_json::from_value(deploys["deploys"].clone())?;
    let switches: Vec<SwitchRecord> = serde_json::from_value(switches["switches"].clone())?;
    print!("{}", render_history(&deploys, &switches));
    Ok(ExitCode::SUCCESS)
}

/// Deploys and switches in one timeline, oldest first. Switches a deploy made
/// are shown under it; every other switch (manual, forced, rollbacks) on a
/// line of its own with who and why. Versions a deploy rejected say so.
pub fn render_history(deploys: &[DeployRecord], switches: &[SwitchRecord]) -> String {
    enum Entry<'a> {
        Deploy(&'a DeployRecord),
        Switch(&'a SwitchRecord),
    }
    let by_deploy = |s: &SwitchRecord| {
        s.actor
            .strip_prefix("deploy #")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|id| deploys.iter().any(|d| d.id == *id))
    };
    let mut entries: Vec<(u64, Entry)> = deploys
        .iter()
        .map(|d| (d.created_at_ms, Entry::Deploy(d)))
        .chain(
            switches
                .iter()
                .filter(|s| by_deploy(s).is_none())
                .map(|s| (s.at_unix_ms, Entry::Switch(s))),
        )
        .collect();
    entries.sort_by_key(|(at, _)| *at);
    if entries.is_empty() {
        return "no deploys or switches yet\n".into();
    }
    let mut out = String::new();
    for (_, e) in entries {
        match e {
            Entry::Switch(s) => {
                let forced = if s.forced { " (forced)" } else { "" };
                let kind = match s.kind {
                    SwitchKind::Rollback => "rollback",
                    SwitchKind::Switch => "switch",
                };
                out.push_str(&format!(
                    "{} {kind} {} -> {}{forced} by {}: {}\n",
                    s.at, s.from, s.to, s.actor, s.reason
                ));
            }
            Entry::Deploy(d) => {
                out.push_str(&crate::progress::verdict(d));
                if matches!(
                    d.outcome,
                    Outcome::RolledBack | Outcome::Failed | Outcome::Aborted
                ) {
                    out.push_str(&format!(" [{} rejected]", d.version));
                }
                out.push('\n');
                let steps: Vec<String> = d
                    .steps
                    .iter()
                    .map(|s| match s.duration_ms() {
                        Some(ms) => {
                            format!("{} {:?} {ms}ms", s.step.as_str(), s.state).to_lowercase()
                        }
                        None => format!("{} {:?}", s.step.as_str(), s.state).to_lowercase(),
                    })
                    .collect();
                out.push_str(&format!("    {}\n", steps.join(" · ")));
                out.push_str(&format!(
                    "    by {}{}\n",
                    d.options.actor,
                    if d.options.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", d.options.reason)
                    }
                ));
                for s in switches.iter().filter(|s| by_deploy(s) == Some(d.id)) {
                    let kind = match s.kind {
                        SwitchKind::Rollback => "rolled back",
                        SwitchKind::Switch => "switched",
                    };
                    out.push_str(&format!(
                        "    {} {kind} {} -> {}: {}\n",
                        s.at, s.from, s.to, s.reason
                    ));
                }
            }
        }
    }
    out
}

fn outcome(
    result: Result<SwitchOutcome, bluegreen_api::ClientError>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match result {
        Ok(o) if as_json => {
            println!("{}", serde_json::to_string_pretty(&o)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(o) => {
            println!("{} (generation {})", o.message, o.generation);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

fn fail(e: bluegreen_api::ClientError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::from(EXIT_ERROR))
}

/// Human-readable status: the live side first, then a table per upstream.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    match &s.last_switch {
        Some(r) => out.push_str(&format!(
            "live: {} (generation {}, since {} by {}: {})\n",
            s.live, s.generation, r.at, r.actor, r.reason
        )),
        None => out.push_str(&format!("live: {} (never switched)\n", s.live)),
    }
    if let Some(p) = s.previous {
        out.push_str(&format!("rollback target: {p}\n"));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<6} {:<5} {:<8} {:>9} {:>9}  {}\n",
        "SIDE", "ROLE", "HEALTHY", "IN-FLIGHT", "UPGRADED", "DRAINING"
    ));
    for side in Side::ALL {
        let st = &s.sides[side];
        let draining = match &st.draining {
            Some(d) => format!(
                "{} left, cut in {:.1}s",
                d.remaining,
                d.deadline_in_ms as f64 / 1000.0
            ),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:<6} {:<5} {:<8} {:>9} {:>9}  {}\n",
            side.as_str(),
            st.role,
            format!("{}/{}", st.healthy, st.upstreams.len()),
            st.in_flight,
            st.upgraded,
            draining
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<22} {:<6} {:<10} {:>11}  {}\n",
        "UPSTREAM", "SIDE", "HEALTH", "OUTSTANDING", "LAST ERROR"
    ));
    for side in Side::ALL {
        for u in &s.sides[side].upstreams {
            let health = match u.health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                Health::Unknown => "unknown",
            };
            let err = match (&u.last_error, u.health) {
                (Some(e), h) if h != Health::Healthy => e.as_str(),
                _ => "",
            };
            out.push_str(&format!(
                "{:<22} {:<6} {:<10} {:>11}  {}\n",
                u.address,
                side.as_str(),
                health,
                u.outstanding,
                err
            ));
        }
    }
    out
}

/// `bluegreen record start|stop|status`.
pub async fn record(
    args: &AdminArgs,
    action: crate::cli::RecordAction,
) -> anyhow::Result<ExitCode> {
    use crate::cli::RecordAction;
    let c = client(args);
    let result: Result<serde_json::Value, _> = match action {
        RecordAction::Start {
            to,
            percent,
            max_bytes,
            max_body,
            redact,
        } => {
            let body = RecordBody {
                to,
                percent: Some(percent),
                max_bytes,
                max_body,
                redact: (!redact.is_empty()).then_some(redact),
            };
            c.post("/api/v1/record/start", body).await
        }
        RecordAction::Stop => c.post("/api/v1/record/stop", json!({})).await,
        RecordAction::Status => c.get("/api/v1/record").await,
    };
    match result {
        Ok(v) => {
            let s = v.get("recording").cloned().unwrap_or(v);
            if s.is_null() {
                println!("not recording");
            } else {
                println!(
                    "{}: {} requests, {} bytes written, {} dropped{}",
                    s["path"].as_str().unwrap_or("?"),
                    s["written"],
                    s["bytes"],
                    s["dropped"],
                    if s["full"] == true {
                        " (size cap reached)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}
