//! `bluegreen record start|stop|status`.

use super::*;

/// `bluegreen record start|stop|status`.
pub async fn record(
    args: &AdminArgs,
    action: crate::args::RecordAction,
) -> anyhow::Result<ExitCode> {
    use crate::args::RecordAction;
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
                outln!("not recording")?;
            } else {
                outln!(
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
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}
