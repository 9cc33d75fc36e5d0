//! Switch and rollback.

use super::*;

pub(super) async fn switch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SwitchBody = parse_body(&body)?;
    if body.to_version.is_some() {
        return Err(ApiError::bad_request(
            "field \"to_version\" belongs to rollback; switch takes \"to\" (a side)",
        ));
    }
    let to = match body.to.as_deref() {
        None => state.router.live().other(),
        Some(s) => s
            .parse::<Side>()
            .map_err(|e| ApiError::bad_request(format!("field \"to\": {e}")))?,
    };
    let req = SwitchRequest {
        to,
        kind: SwitchKind::Switch,
        forced: body.force,
        actor: actor(&headers, &body.actor)?,
        reason: reason(body.reason, "manual switch")?,
    };
    let outcome = match &state.pipeline {
        Some(p) => p.switch(req).await?,
        None => state.router.switch(req).await?,
    };
    Ok(Json(outcome).into_response())
}

pub(super) async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SwitchBody = parse_body(&body)?;
    if body.to.is_some() {
        return Err(ApiError::bad_request(
            "field \"to\" is not accepted by rollback: it always returns to the previous side",
        ));
    }
    let who = actor(&headers, &body.actor)?;
    let reason = reason(body.reason, "rollback")?;
    let Some(p) = &state.pipeline else {
        if body.to_version.is_some() {
            return Err(ApiError::bad_request(
                "field \"to_version\" needs a [deploy] pipeline",
            ));
        }
        let outcome = state.router.rollback(body.force, who, reason).await?;
        return Ok(Json(outcome).into_response());
    };
    let result = p.rollback(body.force, body.to_version, who, reason).await?;
    let value = match (result.switched, result.redeploy) {
        (Some(mut o), _) => {
            o.message = result.message;
            serde_json::to_value(o).expect("serialises")
        }
        (None, redeploy) => serde_json::json!({
            "changed": false,
            "live": state.router.live(),
            "message": result.message,
            "redeploy": redeploy,
        }),
    };
    Ok(Json(value).into_response())
}
