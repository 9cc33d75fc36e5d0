//! Client subcommands (`status`, `switch`, `rollback`) and `check`.

use crate::cli::{AdminArgs, EXIT_CONFIG, EXIT_ERROR};
use bluegreen_api::AdminClient;
use bluegreen_core::config::Config;
use bluegreen_core::health::Health;
use bluegreen_core::Side;
use bluegreen_router::status::Status;
use bluegreen_router::SwitchOutcome;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

fn client(args: &AdminArgs) -> AdminClient {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    AdminClient::new(&args.admin, args.token.clone(), format!("cli:{user}"))
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
    let status: Status = match client(args).get("/api/v1/status").await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// `bluegreen switch`.
pub async fn switch(
    args: &AdminArgs,
    to: Option<Side>,
    force: bool,
    reason: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let body = json!({"to": to, "force": force, "reason": reason.unwrap_or_else(|| "manual switch".into())});
    outcome(client(args).post("/api/v1/switch", body).await, as_json)
}

/// `bluegreen rollback`.
pub async fn rollback(
    args: &AdminArgs,
    force: bool,
    reason: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let body =
        json!({"force": force, "reason": reason.unwrap_or_else(|| "manual rollback".into())});
    outcome(client(args).post("/api/v1/rollback", body).await, as_json)
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
