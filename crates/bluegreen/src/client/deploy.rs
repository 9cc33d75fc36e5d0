//! `bluegreen deploy` (and following a deploy to its end), `promote`, `abort`.

use super::*;

/// What `bluegreen deploy` asks for.
pub struct DeployArgs {
    pub version: String,
    pub manual_promote: bool,
    pub skip_smoke: bool,
    pub skip_shadow: bool,
    pub accept_inconclusive: bool,
    /// Canary shares in percent (empty: a direct switch).
    pub canary: Vec<f64>,
    pub step: String,
    pub env: BTreeMap<String, String>,
    pub reason: Option<String>,
    pub detach: bool,
    pub json: bool,
    /// Stop following after this long (the deploy goes on).
    pub timeout: Option<Duration>,
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
        canary: (!d.canary.is_empty()).then(|| d.canary.clone()),
        step: (!d.canary.is_empty()).then(|| d.step.clone()),
        accept_inconclusive: d.accept_inconclusive,
    };
    let record: DeployRecord = match c.post("/api/v1/deploys", body).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if d.detach {
        if d.json {
            outln!("{}", serde_json::to_string(&record)?)?;
        } else {
            outln!(
                "deploy #{} of {} to {} started",
                record.id,
                record.version,
                record.target
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(&c, record.id, Mode::detect(d.json), d.timeout).await
}

/// `bluegreen deploy --follow [ID]`: the current deploy (or deploy ID),
/// followed to its end as if it had been started here.
pub async fn follow_again(
    args: &AdminArgs,
    id: Option<u64>,
    json: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let c = client(args);
    let id = match id {
        Some(id) => id,
        None => match c.get::<DeployRecord>("/api/v1/deploys/current").await {
            Ok(d) => d.id,
            Err(bluegreen_api::ClientError::Api { status, .. }) if status == 404 => {
                eprintln!("error: no deploy to follow: none was ever started on this router");
                return Ok(ExitCode::from(EXIT_ERROR));
            }
            Err(e) => return fail(e),
        },
    };
    follow(&c, id, Mode::detect(json), timeout).await
}

/// Follows a deploy to its end through the event stream, showing progress;
/// the exit code says how it ended. The record is read again after each
/// (re)connection, so nothing between two streams is missed; while the
/// router restarts (an upgrade; its deploy resumes) it keeps trying for a
/// minute.
pub async fn follow(
    c: &AdminClient,
    id: u64,
    mode: Mode,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    use bluegreen_api::ClientError;
    let mut progress = Progress::new(mode);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let Some(connected) = within(deadline, c.events()).await else {
            return Ok(gave_up(id, None, timeout));
        };
        let mut stream = match connected {
            Ok(s) => Some(s),
            Err(e @ ClientError::Unreachable { .. }) => {
                match out_of_patience(&mut unreachable_since, e) {
                    Some(e) => return fail(e),
                    None => None,
                }
            }
            Err(e) => return fail(e),
        };
        let mut last = None;
        let path = format!("/api/v1/deploys/{id}");
        let Some(record) = within(deadline, c.get::<DeployRecord>(&path)).await else {
            return Ok(gave_up(id, None, timeout));
        };
        match record {
            Ok(d) if d.is_finished() => {
                progress.finish(&d)?;
                return Ok(ExitCode::from(exit_code(d.outcome)));
            }
            Ok(d) => {
                unreachable_since = None;
                progress.update(&d)?;
                last = Some(d);
            }
            Err(e @ ClientError::Unreachable { .. }) => {
                if let Some(e) = out_of_patience(&mut unreachable_since, e) {
                    return fail(e);
                }
            }
            Err(e) => return fail(e),
        }
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        while let Some(s) = stream.as_mut() {
            // The record is read again every few seconds as well: a deploy
            // another node of a cluster finishes may send this node's
            // stream no event for its end.
            let next = tokio::select! {
                n = async {
                    match deadline {
                        Some(at) => tokio::time::timeout_at(at, s.next()).await.ok(),
                        None => Some(s.next().await),
                    }
                } => match n {
                    Some(n) => n,
                    None => return Ok(gave_up(id, last.as_ref(), timeout)),
                },
                _ = recheck.tick() => {
                    if let Ok(d) = c.get::<DeployRecord>(&path).await {
                        if d.is_finished() {
                            progress.finish(&d)?;
                            return Ok(ExitCode::from(exit_code(d.outcome)));
                        }
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(ev)) if ev.name == "deploy" => {
                    let Ok(d) = serde_json::from_value::<DeployRecord>(ev.data) else {
                        continue;
                    };
                    if d.id != id {
                        continue;
                    }
                    if d.is_finished() {
                        progress.finish(&d)?;
                        return Ok(ExitCode::from(exit_code(d.outcome)));
                    }
                    progress.update(&d)?;
                    last = Some(d);
                }
                // Fell behind: read the record again.
                Some(Ok(ev)) if ev.name == "lagged" => break,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
            return Ok(gave_up(id, last.as_ref(), timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often `--follow` reads the deploy's record besides its events.
const RECHECK: Duration = Duration::from_secs(2);

/// `--timeout` ran out while the deploy goes on.
fn gave_up(id: u64, last: Option<&DeployRecord>, timeout: Option<Duration>) -> ExitCode {
    let step = last
        .and_then(|d| d.next_step())
        .map(|s| s.as_str())
        .unwrap_or("running");
    eprintln!(
        "stopped following after {}: deploy #{id} goes on (step {step}); follow it again with `bluegreen deploy --follow {id}`",
        humantime::format_duration(timeout.unwrap_or_default())
    );
    ExitCode::from(EXIT_TIMEOUT)
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
            outln!(
                "deploy #{} ({}) promoted: switching to {}",
                d.id,
                d.version,
                d.target
            )?;
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
            outln!(
                "aborting deploy #{} ({}); {} stays live",
                d.id,
                d.version,
                d.from
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}
