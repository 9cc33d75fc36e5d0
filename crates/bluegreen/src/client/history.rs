//! `bluegreen history`: deploys and switches in one timeline.

use super::*;

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
        tidy(&mut all);
        outln!("{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let deploys: Vec<DeployRecord> = serde_json::from_value(deploys["deploys"].clone())?;
    let switches: Vec<SwitchRecord> = serde_json::from_value(switches["switches"].clone())?;
    out!("{}", render_history(&deploys, &switches))?;
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
                out.push_str(&crate::client::progress::verdict(d));
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
                if let Some(s) = &d.side_by_side {
                    out.push_str(&format!(
                        "    {}\n",
                        s.sentence(crate::client::status::now_ms())
                    ));
                }
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
