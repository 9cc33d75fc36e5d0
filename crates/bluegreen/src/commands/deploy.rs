//! `bluegreen deploy` (and following a deploy to its end), `promote`, `abort`.

use super::*;

/// What `bluegreen deploy` asks for.
pub struct DeployArgs {
    pub version: String,
    pub manual_promote: bool,
    pub skip_smoke: bool,
    pub skip_shadow: bool,
    /// Canary shares in percent (empty: a direct switch).
    pub canary: Vec<f64>,
    pub step: String,
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
        canary: (!d.canary.is_empty()).then(|| d.canary.clone()),
        step: (!d.canary.is_empty()).then(|| d.step.clone()),
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
