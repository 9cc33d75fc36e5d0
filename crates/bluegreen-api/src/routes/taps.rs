//! Taps: recording and shadowing, and the shadow report.

use super::*;

pub(super) async fn record_start(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RecordBody = parse_body(&body)?;
    bluegreen_router::recorder::check_name(&body.to)
        .map_err(|e| ApiError::bad_request(format!("field \"to\": {e}")))?;
    let percent = body.percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&percent) {
        return Err(ApiError::bad_request(format!(
            "field \"percent\": {percent} is not between 0 and 100"
        )));
    }
    let options = bluegreen_router::recorder::RecordOptions {
        percent,
        max_bytes: body.max_bytes.unwrap_or(1 << 30),
        max_body: body.max_body.unwrap_or(64 * 1024),
        redact: body.redact.unwrap_or_else(|| {
            [
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        }),
    };
    let status = state.router.start_recording(&body.to, options).await?;
    Ok(Json(status).into_response())
}

pub(super) async fn record_stop(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.router.stop_recording().await?;
    Ok(Json(status).into_response())
}

pub(super) async fn record_status(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"recording": state.router.recording()})).into_response()
}

pub(super) async fn shadow_start(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ShadowBody = parse_body(&body)?;
    let mut options =
        bluegreen_router::shadow::ShadowOptions::from_config(&state.router.config().shadow);
    if let Some(p) = body.percent {
        if !(0.0..=100.0).contains(&p) {
            return Err(ApiError::bad_request(format!(
                "field \"percent\": {p} is not between 0 and 100"
            )));
        }
        options.percent = p;
    }
    if let Some(d) = &body.duration {
        let d = humantime::parse_duration(d)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "field \"for\": {d:?} is not a duration like \"30s\" or \"10m\""
                ))
            })?;
        options.duration_ms = Some(d.as_millis() as u64);
    }
    if body.requests == Some(0) {
        return Err(ApiError::bad_request(
            "field \"requests\": must be at least 1",
        ));
    }
    options.requests = body.requests;
    let shadow = state.router.start_shadow(options).await?;
    Ok(Json(serde_json::json!({"shadow": shadow.report()})).into_response())
}

pub(super) async fn shadow_stop(State(state): State<AppState>) -> Result<Response, ApiError> {
    let shadow = state.router.stop_shadow().await?;
    Ok(Json(serde_json::json!({"shadow": shadow.report()})).into_response())
}

/// An intended difference: left out of the running shadow run's report and
/// gate (what was counted too) and of every later run in this process;
/// recorded in the running deploy's log. In a cluster, on the node that
/// runs the deploy (its run is the one judged).
pub(super) async fn shadow_accept(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<crate::types::AcceptBody>,
) -> Result<Response, ApiError> {
    // Names as differences carry them: header names lower-case, pointers
    // without a trailing slash.
    let given = body.field.trim();
    let normalised = match given.strip_prefix("header:") {
        Some(name) => format!("header:{}", name.to_ascii_lowercase()),
        None if given.len() > 1 => given.trim_end_matches('/').to_string(),
        None => given.to_string(),
    };
    let field = normalised.as_str();
    let ok = field.starts_with('/')
        || field == "status"
        || field == "body"
        || field.strip_prefix("header:").is_some_and(|h| !h.is_empty());
    if !ok || field.len() > 512 || field.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field:?} is not a field: a JSON pointer (\"/items/*/currency\"), \"status\", \"header:NAME\" or \"body\""
        )));
    }
    // Both go into the deploy's log, shown in the history.
    input::no_bidi("field", field).map_err(ApiError::bad_request)?;
    let reason = reason(body.reason.clone(), "")?;
    let who = actor(&headers, &body.actor)?;
    if let Some(p) = &state.pipeline {
        p.accept_here()?;
    }
    let running = state.router.accept_difference(field);
    let text = format!(
        "shadow: {who} accepted {field} as an intended difference{}",
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        }
    );
    tracing::info!("{text}");
    if let Some(p) = &state.pipeline {
        p.record(text.clone()).await;
    }
    Ok(Json(serde_json::json!({
        "accepted": state.router.accepted_differences(),
        "running": running,
        "message": format!(
            "{text}; {}. It lasts for this process: add it to [shadow] ignore_paths to keep it",
            if running { "the running shadow run no longer counts it" } else { "no shadow run is going; the next one will not count it" }
        ),
    }))
    .into_response())
}

pub(super) async fn shadow_report(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"shadow": state.router.shadow().map(|s| s.report())})).into_response()
}
