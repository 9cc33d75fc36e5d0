//! Admin routes. `/livez` and `/readyz` need no token; everything under
//! `/api/v1` does.

mod cluster;
mod deploys;
mod notify;
mod process;
mod status;
mod switch;
mod taps;
mod traffic;

use crate::error::ApiError;
use crate::lifecycle::{Control, ControlSender};
use crate::types::{AbortBody, DeployBody, RecordBody, ShadowBody, StatusView, SwitchBody};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bluegreen_core::deploy::DeployOptions;
use bluegreen_core::input;
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_pipeline::Pipeline;
use bluegreen_router::Router;
use cluster::*;
use deploys::*;
use process::*;
use serde::de::DeserializeOwned;
use status::*;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use switch::*;
use taps::*;
use traffic::*;

#[derive(Clone)]
struct AppState {
    router: Arc<Router>,
    pipeline: Option<Arc<Pipeline>>,
    token: Arc<[u8]>,
    /// Requests to the serving process (upgrade); none in tests of the
    /// routes alone.
    control: Option<ControlSender>,
}

impl AppState {
    fn pipeline(&self) -> Result<&Arc<Pipeline>, ApiError> {
        self.pipeline.as_ref().ok_or_else(ApiError::no_pipeline)
    }
}

/// Builds the admin application. `token` is the bearer token every
/// `/api/v1` call must present; `pipeline` is present when the config has a
/// `[deploy]` table.
pub fn app(
    router: Arc<Router>,
    pipeline: Option<Arc<Pipeline>>,
    token: &str,
    control: Option<ControlSender>,
) -> axum::Router {
    let state = AppState {
        router,
        pipeline,
        token: Arc::from(token.as_bytes()),
        control,
    };
    let api = axum::Router::new()
        .route("/status", get(status))
        .route("/history", get(history))
        .route("/switch", post(switch))
        .route("/rollback", post(rollback))
        .route("/deploys", get(deploys).post(deploy))
        .route("/deploys/current", get(current_deploy))
        .route("/deploys/{id}", get(one_deploy))
        .route("/promote", post(promote))
        .route("/record", get(record_status))
        .route("/record/start", post(record_start))
        .route("/record/stop", post(record_stop))
        .route("/shadow", get(shadow_report))
        .route("/shadow/start", post(shadow_start))
        .route("/shadow/stop", post(shadow_stop))
        .route("/shadow/accept", post(shadow_accept))
        .route("/migrations", get(migrations))
        .route("/migrations/contract", post(migrations_contract))
        .route("/abort", post(abort))
        .route("/upgrade", post(upgrade))
        .route("/reload", post(reload))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/maintenance", post(maintenance))
        .route("/weight", post(weight))
        .route("/preview-link", post(preview_link))
        .route("/cluster/forget", post(cluster_forget))
        .route("/notify/test", post(notify::notify_test))
        .route("/events", get(events))
        .route("/series", get(series))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // Metrics name upstreams, versions and request paths: token too
    // (Prometheus sends it with `authorization: {credentials_file: ...}`).
    let metrics_route = axum::Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    axum::Router::new()
        .merge(metrics_route)
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
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
        .and_then(|v| bearer(v.as_bytes()))
        .unwrap_or(b"");
    // Constant-time comparison: timing must not reveal how much of a guess matched.
    if presented.is_empty() || !bool::from(presented.ct_eq(&state.token)) {
        return ApiError::unauthorized().into_response();
    }
    // While the state goes to a new process, a change made here would be
    // lost: it waits for the new process (reads still work). A switch or a
    // rollback never waits on an upgrade: it calls off a handover whose new
    // process is not ready yet, and goes ahead here. A second upgrade is
    // refused by the one in progress (409).
    let path = req.uri().path();
    let urgent = path.ends_with("/switch") || path.ends_with("/rollback");
    if urgent && state.router.handing_over() {
        let back = state
            .router
            .abort_handover(std::time::Duration::from_secs(15))
            .await;
        if back {
            tracing::warn!(
                path,
                "an upgrade in progress was called off so that this change goes ahead"
            );
        }
    }
    if req.method() != axum::http::Method::GET
        && !path.ends_with("/upgrade")
        && state.router.handing_over()
    {
        let mut resp = ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "handing_over",
            message: "an upgrade is handing the state to a new process; retry in a moment (a switch or a rollback does not wait: it calls the upgrade off)".into(),
        }
        .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return resp;
    }
    next.run(req).await
}

/// The credentials of `Authorization: Bearer <token>`; the scheme name is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii_start())
}

/// Parses an optional JSON body; an empty body means all defaults.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Who asked: the body's `actor`, else `X-Bluegreen-Actor`, else `api`;
/// bounded and printable, since it is kept in the history.
fn actor(headers: &HeaderMap, given: &Option<String>) -> Result<String, ApiError> {
    let who = given
        .clone()
        .or_else(|| {
            headers
                .get("x-bluegreen-actor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "api".into());
    input::actor(&who).map_err(ApiError::bad_request)?;
    Ok(who)
}

/// The body's `reason`, bounded and printable, or `default`.
fn reason(given: Option<String>, default: &str) -> Result<String, ApiError> {
    let r = given.unwrap_or_else(|| default.into());
    input::reason("reason", &r).map_err(ApiError::bad_request)?;
    Ok(r)
}
