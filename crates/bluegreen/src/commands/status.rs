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
    if let Some(c) = &s.cluster {
        out.push_str(&render_cluster(c));
    }
    out
}

/// The nodes sharing the state, as `istioctl proxy-status` shows proxies:
/// each with the generation it applied, SYNCED or STALE, and its health view.
fn render_cluster(c: &bluegreen_router::ClusterStatus) -> String {
    let mut out = String::from("\n");
    match (&c.error, c.down_since_ms) {
        (Some(e), Some(since)) => out.push_str(&format!(
            "cluster: {} UNREACHABLE for {} s ({e}); this node ({}) serves its last applied state and refuses switches and deploys (fail static)\n",
            c.store,
            now_ms().saturating_sub(since) / 1000,
            c.node
        )),
        _ => out.push_str(&format!(
            "cluster: {} connected; this node is {}\n",
            c.store, c.node
        )),
    }
    if let Some(holder) = &c.deploy_lock {
        out.push_str(&format!("deploy lock: held by {holder}\n"));
    }
    out.push_str(&format!(
        "{:<20} {:<6} {:>10}  {:<6} {:<8} {:<8} {}\n",
        "NODE", "SYNC", "GENERATION", "LIVE", "BLUE", "GREEN", "ADMIN"
    ));
    for n in &c.nodes {
        out.push_str(&format!(
            "{:<20} {:<6} {:>10}  {:<6} {:<8} {:<8} {}\n",
            n.node,
            if n.synced { "SYNCED" } else { "STALE" },
            n.generation,
            n.live.as_str(),
            n.healthy.blue,
            n.healthy.green,
            n.admin.as_deref().unwrap_or("-")
        ));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
