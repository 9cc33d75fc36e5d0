//! Live traffic held, turned away or split: pause, resume, maintenance,
//! weights, preview links.

use super::*;

/// `POST /api/v1/pause {"timeout": "30s", "limit": 10000}`: new live
/// requests wait until `resume` (in-flight ones finish).
pub(super) async fn pause(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: crate::types::PauseBody = if body.is_empty() {
        Default::default()
    } else {
        parse_body(&body)?
    };
    let timeout = match body.timeout.as_deref() {
        None => std::time::Duration::from_secs(30),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("field \"timeout\": {t:?}: {e}")))?,
    };
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(600) {
        return Err(ApiError::bad_request(
            "field \"timeout\": between 1ms and 10m (a held request holds a client)",
        ));
    }
    let limit = body.limit.unwrap_or(10_000);
    if limit == 0 || limit > 1_000_000 {
        return Err(ApiError::bad_request(
            "field \"limit\": between 1 and 1000000",
        ));
    }
    let status = state.router.pause(timeout, limit).await?;
    Ok(Json(status).into_response())
}

/// `POST /api/v1/resume`: held requests go, in the order they came.
pub(super) async fn resume(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.router.resume().await?;
    Ok(Json(status).into_response())
}

/// `POST /api/v1/maintenance {"on": true, "message": "...", "retry_after": 120}`.
pub(super) async fn maintenance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: crate::types::MaintenanceBody = parse_body(&body)?;
    let on = if body.on {
        let message = body.message.unwrap_or_else(|| {
            "This service is down for maintenance; please try again shortly.".into()
        });
        input::reason("message", &message).map_err(ApiError::bad_request)?;
        let retry = body.retry_after.unwrap_or(120);
        if retry > 86_400 {
            return Err(ApiError::bad_request(
                "field \"retry_after\": at most 86400 seconds",
            ));
        }
        Some((message, retry, actor(&headers, &body.actor)?))
    } else {
        None
    };
    let m = state.router.set_maintenance(on).await?;
    Ok(Json(serde_json::json!({ "maintenance": m })).into_response())
}

/// `POST /api/v1/weight {"side": "green", "percent": 10}`: that share of
/// the clients (always the same ones) goes to the idle side.
pub(super) async fn weight(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: crate::types::WeightBody = parse_body(&body)?;
    let side = body
        .side
        .parse::<Side>()
        .map_err(|e| ApiError::bad_request(format!("field \"side\": {e}")))?;
    if !(0.0..100.0).contains(&body.percent) || !body.percent.is_finite() {
        return Err(ApiError::bad_request(
            "field \"percent\": from 0 to below 100 (100 is a switch)",
        ));
    }
    let bp = (body.percent * 100.0).round() as u16;
    let split = state.router.set_weight(side, bp, body.force).await?;
    Ok(Json(serde_json::json!({ "split": split })).into_response())
}

/// `POST /api/v1/preview-link {"for": "1h"}`: a path on the live listener
/// that pins the browser opening it to the idle side.
pub(super) async fn preview_link(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        parse_body(&body)?
    };
    let for_ = body["for"].as_str().unwrap_or("1h");
    let d = humantime::parse_duration(for_)
        .map_err(|e| ApiError::bad_request(format!("field \"for\": {for_:?}: {e}")))?;
    if d.is_zero() || d > std::time::Duration::from_secs(7 * 86_400) {
        return Err(ApiError::bad_request(
            "field \"for\": between 1s and 7 days",
        ));
    }
    let (path, side) = state.router.preview_link(d.as_secs())?;
    let listener = state.router.listener_addr("proxy");
    Ok(Json(serde_json::json!({
        "path": path,
        "url": listener.map(|a| format!("http://{a}{path}")),
        "side": side,
        "expires_in_secs": d.as_secs(),
    }))
    .into_response())
}
