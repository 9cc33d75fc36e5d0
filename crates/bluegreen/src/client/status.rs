//! `bluegreen status`: the live side, every upstream, what each side runs.

use super::*;

/// `bluegreen status`.
pub async fn status(args: &AdminArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut raw: serde_json::Value = match client(args).get("/api/v1/status").await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if as_json {
        tidy(&mut raw);
        outln!("{}", serde_json::to_string_pretty(&raw)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let view: StatusView = serde_json::from_value(raw)?;
    out!("{}", render_view(&view))?;
    Ok(ExitCode::SUCCESS)
}

/// `bluegreen status --watch`: the status again after every change that
/// moves it, as the event stream says (not polled). On a terminal the
/// screen is redrawn; otherwise a line per event between full statuses;
/// with --json, JSON lines `{"event": NAME, "data": ...}` (ticks left out).
pub async fn watch(
    args: &AdminArgs,
    as_json: bool,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let c = client(args);
    let terminal = std::io::stdout().is_terminal();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut unreachable_since: Option<std::time::Instant> = None;
    let (mut shown, mut last_line) = (String::new(), String::new());
    loop {
        let Some(connected) = within(deadline, c.events()).await else {
            return Ok(ExitCode::SUCCESS);
        };
        match connected {
            Ok(mut stream) => {
                unreachable_since = None;
                loop {
                    let next = match deadline {
                        Some(at) => match tokio::time::timeout_at(at, stream.next()).await {
                            Ok(n) => n,
                            Err(_) => return Ok(ExitCode::SUCCESS),
                        },
                        None => stream.next().await,
                    };
                    let Some(Ok(ev)) = next else { break };
                    if ev.name == "tick" {
                        continue;
                    }
                    if as_json {
                        let mut data = ev.data;
                        tidy(&mut data);
                        outln!("{}", json!({"event": ev.name, "data": data}))?;
                    } else if ev.name == "status" {
                        let Ok(view) = serde_json::from_value::<StatusView>(ev.data) else {
                            continue;
                        };
                        // Only when something shown changed.
                        let text = render_view(&view);
                        if text == shown {
                            continue;
                        }
                        if terminal {
                            out!("\x1b[2J\x1b[H")?;
                        }
                        outln!("{}", now_clock())?;
                        out!("{text}")?;
                        shown = text;
                    } else if !terminal {
                        let line = one_line(&ev.name, &ev.data);
                        if line != last_line {
                            outln!("{} {}: {line}", now_clock(), ev.name)?;
                            last_line = line;
                        }
                    }
                }
            }
            Err(e @ bluegreen_api::ClientError::Unreachable { .. }) => {
                if let Some(e) = out_of_patience(&mut unreachable_since, e) {
                    return fail(e);
                }
            }
            Err(e) => return fail(e),
        }
        if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `HH:MM:SS` UTC, for lines that follow events.
fn now_clock() -> String {
    let s = now_ms() / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// An event's data in a line: a deploy's step, an upstream's health, a
/// shadow run's counts, else its detail or message when it has one.
fn one_line(name: &str, data: &serde_json::Value) -> String {
    if name == "deploy" {
        if let Ok(d) = serde_json::from_value::<DeployRecord>(data.clone()) {
            let step = d.next_step().map(|s| s.as_str()).unwrap_or("finishing");
            return format!(
                "#{} {} to {}: {step} ({:?})",
                d.id, d.version, d.target, d.outcome
            );
        }
    }
    if name == "health" {
        // `green 127.0.0.1:8081 is unhealthy: connection refused`
        return format!(
            "{} {} is {}{}",
            data["side"].as_str().unwrap_or("?"),
            data["upstream"].as_str().unwrap_or("?"),
            data["health"].as_str().unwrap_or("?"),
            data["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    if name == "shadow" {
        let r = data.get("shadow").unwrap_or(data);
        return format!(
            "{} pairs compared, {} differing{}",
            r["compared"],
            r["differing"],
            if r["running"] == true {
                ""
            } else {
                " (stopped)"
            }
        );
    }
    for key in ["detail", "message", "reason"] {
        if let Some(s) = data
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
        {
            return s.to_string();
        }
    }
    match (data.get("from"), data.get("to")) {
        (Some(f), Some(t)) => format!(
            "{} → {} (generation {}, by {})",
            f.as_str().unwrap_or("?"),
            t.as_str().unwrap_or("?"),
            data["generation"],
            data["actor"].as_str().unwrap_or("?")
        ),
        _ => data.to_string(),
    }
}

/// The whole status: router, what each side runs, the deploy in progress
/// (saying what it waits for).
fn render_view(view: &StatusView) -> String {
    // With a pipeline the rollback line below says more than the side.
    let mut out = render_status(&view.router, view.rollback.is_none());
    // With a pipeline: what each side runs, and the deploy in progress.
    if let Some(rel) = &view.releases {
        out.push_str(&out_releases(rel, view.resources.as_ref()));
    }
    // What a rollback would do, as the router plans it (instant onto a
    // warm good side, a re-deploy, or a refusal after a rejected version).
    if let Some(r) = &view.rollback {
        out.push_str(&format!("rollback: {r}\n"));
    }
    if let Some(d) = view
        .deploy
        .as_ref()
        .and_then(|d| d.as_ref())
        .filter(|d| d.outcome == Outcome::Running)
    {
        let waiting_gate = d.step(bluegreen_core::deploy::Step::Gate).state
            == bluegreen_core::deploy::StepState::Running;
        let step = if waiting_gate {
            "waiting at the manual gate: `bluegreen promote` to switch, `bluegreen abort` to stop"
                .to_string()
        } else {
            d.next_step()
                .map(|s| s.as_str())
                .unwrap_or("finishing")
                .to_string()
        };
        out.push_str(&format!(
            "\ndeploy #{} of {} to {} in progress: {step}\n",
            d.id, d.version, d.target
        ));
        // What the step said last (a window judged, a canary reaching
        // nobody, a wait for evidence).
        if let Some(detail) = d.next_step().and_then(|s| d.step(s).detail.as_deref()) {
            out.push_str(&format!("  {detail}\n"));
        }
        if !d.report.is_empty() {
            out.push_str(&bluegreen_core::analysis::table(&d.report));
            out.push('\n');
        }
    }
    out
}

/// Each side's release, with its app's resources when the supervisor
/// runs it (CPU in cores and per request, memory, descriptors, restarts).
fn out_releases(
    rel: &Sides<SideRelease>,
    resources: Option<&Sides<Option<bluegreen_pipeline::resources::SideResources>>>,
) -> String {
    let mut out = format!("\n{:<6} {:<16} {:<15} APP\n", "SIDE", "VERSION", "STATE");
    for side in Side::ALL {
        let r = &rel[side];
        let state = match (&r.version, r.running) {
            (None, _) => "-",
            (Some(_), true) => "running",
            (Some(_), false) => "decommissioned",
        };
        let app = resources
            .and_then(|x| x[side].as_ref())
            .map(|a| {
                let per = a
                    .cpu_ms_per_request
                    .map(|m| format!(", {m:.2} ms/request"))
                    .unwrap_or_default();
                format!(
                    "cpu {:.2} cores{per}, rss {:.1} MiB, {} fds, {} restarts",
                    a.cpu_cores,
                    a.rss_bytes as f64 / 1_048_576.0,
                    a.fds,
                    a.restarts
                )
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<6} {:<16} {state:<15} {app}\n",
            side.as_str(),
            r.version.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// Human-readable status: the live side first, then a table per upstream.
pub fn render_status(s: &Status, target_line: bool) -> String {
    let mut out = String::new();
    match &s.last_switch {
        Some(r) => out.push_str(&format!(
            "live: {} (generation {}, since {} by {}: {})\n",
            s.live, s.generation, r.at, r.actor, r.reason
        )),
        None => out.push_str(&format!("live: {} (never switched)\n", s.live)),
    }
    if let Some(p) = s.previous.filter(|_| target_line) {
        out.push_str(&format!("rollback target: {p}\n"));
    }
    out.push_str(&routing_lines(s));
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

/// What changes where live requests go, besides the live side: each on its
/// own line, so text status never looks healthy while every live request
/// gets the maintenance page.
fn routing_lines(s: &Status) -> String {
    let mut out = String::new();
    let now = now_ms();
    if let Some(m) = &s.maintenance {
        out.push_str(&format!(
            "MAINTENANCE: every live request is answered 503 ({:?}, Retry-After {} s) since {} s ago, by {}; `bluegreen maintenance off` ends it\n",
            m.message,
            m.retry_after_secs,
            now.saturating_sub(m.since_ms) / 1000,
            m.actor
        ));
    }
    if let Some(p) = &s.paused {
        out.push_str(&format!(
            "PAUSED: live requests are held ({} waiting, at most {}, each up to {} ms) since {} s ago; `bluegreen resume` releases them\n",
            p.waiting,
            p.limit,
            p.timeout_ms,
            now.saturating_sub(p.since_ms) / 1000
        ));
    }
    if let Some(split) = &s.split {
        out.push_str(&format!(
            "weight: {:.2} % of live clients go to {} (`bluegreen weight {} 0` ends it)\n",
            split.basis_points as f64 / 100.0,
            split.side,
            split.side
        ));
    }
    for t in &s.notify {
        let last = t.last_error.chars().take(200).collect::<String>();
        out.push_str(&format!(
            "NOTIFY: hook {} is failing: {} notice{} waiting, the oldest for {} s, {} attempt{} ({last}); `bluegreen notify test {}` tries it now\n",
            t.hook,
            t.pending,
            if t.pending == 1 { "" } else { "s" },
            now.saturating_sub(t.oldest_ms) / 1000,
            t.attempts,
            if t.attempts == 1 { "" } else { "s" },
            t.hook
        ));
    }
    if let Some(sess) = &s.sessions {
        if let (Some(side), Some(until)) = (sess.pinned_side, sess.until_ms) {
            out.push_str(&format!(
                "sessions: clients with a session stay on {side} for {} s more ({} requests kept there so far)\n",
                until.saturating_sub(now) / 1000,
                sess.pinned_requests[side]
            ));
        }
    }
    out
}

/// The nodes sharing the state, as `istioctl proxy-status` shows proxies:
/// each with the generation it applied, SYNCED or STALE, and its health view.
fn render_cluster(c: &bluegreen_router::ClusterStatus) -> String {
    let mut out = String::from("\n");
    match (&c.error, c.down_since_ms) {
        (Some(e), Some(since)) => out.push_str(&format!(
            "cluster: {} UNREACHABLE for {} s ({e}); this node ({}) serves its last applied state and refuses switches and deploys (fail static)\nthe other nodes' rows are as last read: their SYNC is not known now (?)\n",
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
    // With the store out of reach, other nodes' rows are what was last
    // read: never shown as SYNCED.
    let unreachable = c.error.is_some();
    for n in &c.nodes {
        let sync = match (unreachable && n.node != c.node, n.synced) {
            (true, _) => "?",
            (false, true) => "SYNCED",
            (false, false) => "STALE",
        };
        out.push_str(&format!(
            "{:<20} {:<6} {:>10}  {:<6} {:<8} {:<8} {}\n",
            n.node,
            sync,
            n.generation,
            n.live.as_str(),
            n.healthy.blue,
            n.healthy.green,
            n.admin.as_deref().unwrap_or("-")
        ));
    }
    for l in &c.lost {
        out.push_str(&format!(
            "{:<20} {:<6} {:>10}  last seen {} s ago; `bluegreen cluster-forget {}` once it is gone for good\n",
            l.node,
            "LOST",
            "-",
            now_ms().saturating_sub(l.last_seen_ms) / 1000,
            l.node
        ));
    }
    out
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use serde_json::json;

    #[test]
    fn a_health_event_is_one_line_for_people() {
        // The router's event data, with and without a reason.
        let down = json!({"side": "green", "upstream": "127.0.0.1:8081", "health": "unhealthy",
            "reason": "connection refused"});
        assert_eq!(
            one_line("health", &down),
            "green 127.0.0.1:8081 is unhealthy: connection refused"
        );
        let up =
            json!({"side": "blue", "upstream": "10.0.0.1:80", "health": "healthy", "reason": null});
        assert_eq!(one_line("health", &up), "blue 10.0.0.1:80 is healthy");
    }
}
