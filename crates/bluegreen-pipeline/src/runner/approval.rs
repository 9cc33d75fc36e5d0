//! The gate's approval webhook (`[deploy.gate] webhook`, Flagger's
//! `confirm-promotion`): the release's facts POSTed until the receiver
//! says 200 (promote) or 403 (abort, its body the reason); `bluegreen
//! promote` passes the gate too. Anything else, or no answer, is asked
//! again after `interval`, until `promote_timeout` (1 h by default).

use super::*;
use bluegreen_core::config::deploy::GateConfig;
use bluegreen_router::notify::send;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// What one question got.
enum Reply {
    Approved(String),
    Refused(String),
    /// Not yet (another status, or no answer): why, for the step's note.
    Later(String),
}

pub(super) async fn ask_until_answered(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    d: &DeployRecord,
    gate: &GateConfig,
) -> StepEnd {
    let limit = p
        .config()
        .promote_timeout
        .unwrap_or(Duration::from_secs(3600));
    let deadline = tokio::time::Instant::now() + limit;
    // The system's CA roots are files: read off the async threads.
    let client = match tokio::task::spawn_blocking(send::client).await {
        Ok(c) => c,
        Err(e) => return StepEnd::End(Outcome::Failed, format!("the approval client: {e}")),
    };
    let body = serde_json::json!({
        "deploy_id": d.id,
        "version": d.version,
        "previous_version": d.previous_version,
        "target": d.target,
        "live": d.from,
        "actor": d.options.actor,
        "reason": d.options.reason,
        "steps": d.steps.iter().map(|s| serde_json::json!({"step": s.step, "state": s.state, "detail": s.detail})).collect::<Vec<_>>(),
    })
    .to_string();
    let mut asked = 0u32;
    loop {
        asked += 1;
        let reply = tokio::select! {
            _ = handle.promote.notified() => return StepEnd::Done(Some("promoted (bluegreen promote)".into())),
            _ = handle.abort.cancelled() => return StepEnd::End(Outcome::Aborted, aborted(handle)),
            _ = tokio::time::sleep_until(deadline) => return StepEnd::End(
                Outcome::Aborted,
                format!("no approval from {} within {} (promote_timeout)", gate.webhook, humantime::format_duration(limit)),
            ),
            r = ask(&client, gate, &body) => r,
        };
        match reply {
            Reply::Approved(b) => {
                return StepEnd::Done(Some(format!("approved by {}{}", gate.webhook, said(&b))))
            }
            Reply::Refused(b) => {
                return StepEnd::End(
                    Outcome::Aborted,
                    format!(
                        "refused by the approval webhook {}{}",
                        gate.webhook,
                        said(&b)
                    ),
                )
            }
            Reply::Later(why) => {
                note(
                    p,
                    Step::Gate,
                    format!(
                        "waiting for approval from {} (asked {asked} times; last: {why})",
                        gate.webhook
                    ),
                )
                .await;
            }
        }
        tokio::select! {
            _ = handle.promote.notified() => return StepEnd::Done(Some("promoted (bluegreen promote)".into())),
            _ = handle.abort.cancelled() => return StepEnd::End(Outcome::Aborted, aborted(handle)),
            _ = tokio::time::sleep_until(deadline) => return StepEnd::End(
                Outcome::Aborted,
                format!("no approval from {} within {} (promote_timeout)", gate.webhook, humantime::format_duration(limit)),
            ),
            _ = tokio::time::sleep(gate.interval) => {}
        }
    }
}

/// `: BODY` when the receiver said something.
fn said(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        String::new()
    } else {
        format!(": {}", b.chars().take(300).collect::<String>())
    }
}

async fn ask(client: &send::HookClient, gate: &GateConfig, body: &str) -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut req = http::Request::post(gate.webhook.as_str())
        .header("content-type", "application/json")
        .header("x-bluegreen-event", "approval")
        .header("x-bluegreen-timestamp", now.to_string());
    if let Some(var) = &gate.secret_env {
        match std::env::var(var) {
            Ok(secret) => {
                req = req.header(
                    "x-bluegreen-signature",
                    send::signature(secret.as_bytes(), now, body),
                )
            }
            Err(_) => {
                return Reply::Later(format!(
                    "deploy.gate.secret_env: {var} is not set in the router's environment, so nothing was sent"
                ))
            }
        }
    }
    let Ok(req) = req.body(Full::new(Bytes::from(body.to_string()))) else {
        return Reply::Later(format!("{} is not a valid request URL", gate.webhook));
    };
    let work = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    match tokio::time::timeout(gate.timeout, work).await {
        Err(_) => Reply::Later(format!(
            "no answer within {} (deploy.gate.timeout)",
            humantime::format_duration(gate.timeout)
        )),
        Ok(Err(e)) => Reply::Later(e),
        Ok(Ok((200, b))) => Reply::Approved(b),
        Ok(Ok((403, b))) => Reply::Refused(b),
        Ok(Ok((s, b))) => Reply::Later(format!("answered {s}{}", said(&b))),
    }
}
