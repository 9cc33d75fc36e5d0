//! Admin routes. `/livez` and `/readyz` need no token; everything under
//! `/api/v1` does.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_router::Router;
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Clone)]
struct AppState {
    router: Arc<Router>,
    token: Arc<[u8]>,
}

/// Builds the admin application. `token` is the bearer token every
/// `/api/v1` call must present.
pub fn app(router: Arc<Router>, token: &str) -> axum::Router {
    let state = AppState {
        router,
        token: Arc::from(token.as_bytes()),
    };
    let api = axum::Router::new()
        .route("/status", get(status))
        .route("/history", get(history))
        .route("/switch", post(switch))
        .route("/rollback", post(rollback))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    axum::Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .nest("/api/v1", api)
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                message: "method not allowed on this endpoint".into(),
            }
        })
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    // Constant-time comparison: timing must not reveal how much of a guess matched.
    if !presented.is_empty() && bool::from(presented.ct_eq(&state.token)) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.router.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no usable upstream on the live side ({})\n",
                state.router.live()
            ),
        )
            .into_response()
    }
}

async fn status(State(state): State<AppState>) -> Response {
    Json(state.router.status().await).into_response()
}

async fn history(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"switches": state.router.history().await})).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    to: Option<String>,
    #[serde(default)]
    force: bool,
    actor: Option<String>,
    reason: Option<String>,
}

/// Parses an optional JSON body; an empty body means all defaults.
fn parse_body(body: &Bytes) -> Result<SwitchBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SwitchBody::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn actor(headers: &HeaderMap, body: &SwitchBody) -> String {
    body.actor
        .clone()
        .or_else(|| {
            headers
                .get("x-bluegreen-actor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "api".into())
}

async fn switch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
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
        actor: actor(&headers, &body),
        reason: body
            .reason
            .clone()
            .unwrap_or_else(|| "manual switch".into()),
    };
    let outcome = state.router.switch(req).await?;
    Ok(Json(outcome).into_response())
}

async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    if body.to.is_some() {
        return Err(ApiError::bad_request(
            "field \"to\" is not accepted by rollback: it always returns to the previous side",
        ));
    }
    let outcome = state
        .router
        .rollback(
            body.force,
            actor(&headers, &body),
            body.reason.clone().unwrap_or_else(|| "rollback".into()),
        )
        .await?;
    Ok(Json(outcome).into_response())
}
