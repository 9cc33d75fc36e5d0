//! `bluegreen status`: the live side, every upstream, what each side runs.

use super::*;

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
