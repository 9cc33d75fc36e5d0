//! Deploys: start, follow, promote, abort; the migrations of a release.

use super::*;

pub(super) async fn deploy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    let body: DeployBody = parse_body(&body)?;
    input::version(&body.version).map_err(ApiError::bad_request)?;
    let canary: Vec<u16> = match &body.canary {
        None => Vec::new(),
        Some(shares) => {
            let mut bp = Vec::new();
            for &x in shares {
                if !(x > 0.0 && x < 100.0) {
                    return Err(ApiError::bad_request(format!(
                        "field \"canary\": {x} is not a share between 0 and 100 (percent)"
                    )));
                }
                let b = (x * 100.0).round() as u16;
                if b == 0 || b >= 10_000 {
                    return Err(ApiError::bad_request(format!(
                        "field \"canary\": {x}% is not a share between 0.01 and 99.99"
                    )));
                }
                if bp.last().is_some_and(|&l| l >= b) {
                    return Err(ApiError::bad_request("field \"canary\": shares must grow"));
                }
                bp.push(b);
            }
            bp
        }
    };
    let step = match body.step.as_deref() {
        None => std::time::Duration::from_secs(300),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("field \"step\": {t:?}: {e}")))?,
    };
    if step < std::time::Duration::from_millis(500) || step > std::time::Duration::from_secs(86_400)
    {
        return Err(ApiError::bad_request(
            "field \"step\": between 500ms and 24h",
        ));
    }
    let options = DeployOptions {
        manual_promote: body.manual_promote,
        skip_smoke: body.skip_smoke,
        skip_shadow: body.skip_shadow,
        env: body.env,
        actor: actor(&headers, &body.actor)?,
        reason: reason(body.reason, "")?,
        canary_step_ms: if canary.is_empty() {
            0
        } else {
            step.as_millis() as u64
        },
        canary,
        accept_inconclusive: body.accept_inconclusive,
    };
    let record = p.deploy(&body.version, options).await?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

pub(super) async fn deploys(State(state): State<AppState>) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    Ok(
        Json(serde_json::json!({"deploys": p.history().await, "releases": p.sides().await}))
            .into_response(),
    )
}

pub(super) async fn current_deploy(State(state): State<AppState>) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    match p.current().await {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::not_found(
            "/api/v1/deploys/current (no deploy yet)",
        )),
    }
}

pub(super) async fn one_deploy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("deploy id {id:?} is not a number")))?;
    Ok(Json(p.get(id).await?).into_response())
}

pub(super) async fn promote(State(state): State<AppState>) -> Result<Response, ApiError> {
    let record = state.pipeline()?.promote().await?;
    Ok(Json(record).into_response())
}

pub(super) async fn abort(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: AbortBody = parse_body(&body)?;
    let who = actor(&headers, &body.actor)?;
    let reason = format!("{} by {who}", reason(body.reason, "aborted")?);
    let record = state.pipeline()?.abort(reason).await?;
    Ok(Json(record).into_response())
}

/// `GET /api/v1/migrations`: every migration file, applied or pending.
pub(super) async fn migrations(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.pipeline()?.migrations().await?).into_response())
}

/// `POST /api/v1/migrations/contract`: the live release's contract files.
pub(super) async fn migrations_contract(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: crate::types::ContractBody = parse_body(&body)?;
    let who = actor(&headers, &body.actor)?;
    let message = state.pipeline()?.contract(body.force, who).await?;
    Ok(Json(serde_json::json!({ "message": message })).into_response())
}
