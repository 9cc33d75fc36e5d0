//! `bluegreen switch` and `bluegreen rollback`.

use super::*;

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
            outln!("{}", answer["message"].as_str().unwrap_or_default())?;
        }
        return follow(&c, d.id, Mode::detect(as_json), None).await;
    }
    let o: SwitchOutcome = serde_json::from_value(answer)?;
    outcome(Ok(o), as_json)
}
