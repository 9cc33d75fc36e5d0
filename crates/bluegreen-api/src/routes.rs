//! Admin routes. `/livez` and `/readyz` need no token; everything under
//! `/api/v1` does.

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
use serde::de::DeserializeOwned;
use std::sync::Arc;
use subtle::ConstantTimeEq;

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

async fn readyz(State(state): State<AppState>) -> Response {
    if state.router.ready() {
        // Still ready while failing static: the node serves what it
        // applied last, which is what a balancer wants from it.
        match state.router.fail_static() {
            Some(why) => (StatusCode::OK, format!("ready (fail static: {why})\n")).into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        }
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
    Json(status_value(&state).await).into_response()
}

/// The router's status, with each side's release and the current deploy
/// when there is a pipeline.
async fn status_value(state: &AppState) -> StatusView {
    let router = state.router.status().await;
    match &state.pipeline {
        Some(p) => StatusView {
            router,
            releases: Some(p.sides().await),
            deploy: Some(p.current().await),
            rollback: p.rollback_preview().await,
            resources: p.resources().map(|r| r.now()),
        },
        None => StatusView {
            router,
            releases: None,
            deploy: None,
            rollback: None,
            resources: None,
        },
    }
}

// ---- observability -------------------------------------------------------------

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// A dashboard file: no token needed (it holds no data), never cached across
/// upgrades, and a strict content policy (the page only talks to this origin).
fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::render(&state.router, state.pipeline.as_ref()).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn series(State(state): State<AppState>) -> Response {
    let points = state.router.series.points();
    let window_ms = (bluegreen_router::events::SERIES_POINTS as u64) * 1000;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_sub(window_ms);
    let switches: Vec<serde_json::Value> = state
        .router
        .history()
        .await
        .into_iter()
        .filter(|r| r.at_unix_ms >= since)
        .map(|r| serde_json::json!({"at_ms": r.at_unix_ms, "to": r.to, "kind": r.kind, "reason": r.reason}))
        .collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({"interval_ms": 1000, "points": points, "switches": switches})),
    )
        .into_response()
}

/// Server-Sent Events: `status` first, then every state change as it
/// happens (`switch`, `health`, `deploy`, `bake`, `shadow`, `tick`); after a
/// change that moves the status, a fresh `status`. A listener that falls
/// behind gets `lagged` with how many it missed, then a fresh `status`.
async fn events(State(state): State<AppState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let rx = state.router.events.subscribe();
    let stop = state.router.shutdown_token().clone();
    let stream = futures_util::stream::unfold(
        (rx, state, true, stop),
        |(mut rx, state, status_due, stop)| async move {
            if status_due {
                let v = status_value(&state).await;
                let ev = Event::default()
                    .event("status")
                    .data(serde_json::to_string(&v).unwrap_or_default());
                return Some((
                    Ok::<_, std::convert::Infallible>(ev),
                    (rx, state, false, stop),
                ));
            }
            let got = tokio::select! {
                r = rx.recv() => r,
                _ = stop.cancelled() => return None,
            };
            match got {
                Ok(e) => {
                    let status_due = matches!(
                        e.name(),
                        "switch"
                            | "health"
                            | "deploy"
                            | "weight"
                            | "pause"
                            | "maintenance"
                            | "reload"
                            | "cluster"
                            | "tls"
                    );
                    let ev = Event::default().event(e.name()).data(e.data().to_string());
                    Some((Ok(ev), (rx, state, status_due, stop)))
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default()
                        .event("lagged")
                        .data(serde_json::json!({"missed": n}).to_string());
                    Some((Ok(ev), (rx, state, true, stop)))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        },
    );
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))),
    )
        .into_response()
}

async fn history(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"switches": state.router.history().await})).into_response()
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

/// `POST /api/v1/pause {"timeout": "30s", "limit": 10000}`: new live
/// requests wait until `resume` (in-flight ones finish).
async fn pause(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
    let status = state
        .router
        .pause(timeout, limit)
        .await
        .map_err(|e| ApiError::conflict("already_paused", e))?;
    Ok(Json(status).into_response())
}

/// `POST /api/v1/resume`: held requests go, in the order they came.
async fn resume(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state
        .router
        .resume()
        .await
        .map_err(|e| ApiError::conflict("not_paused", e))?;
    Ok(Json(status).into_response())
}

/// `POST /api/v1/maintenance {"on": true, "message": "...", "retry_after": 120}`.
async fn maintenance(
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
    let m = state
        .router
        .set_maintenance(on)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "persist_failed",
            message: e,
        })?;
    Ok(Json(serde_json::json!({ "maintenance": m })).into_response())
}

/// `POST /api/v1/weight {"side": "green", "percent": 10}`: that share of
/// the clients (always the same ones) goes to the idle side.
async fn weight(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
    let split = state
        .router
        .set_weight(side, bp, body.force)
        .await
        .map_err(|e| ApiError::conflict("weight_refused", e))?;
    Ok(Json(serde_json::json!({ "split": split })).into_response())
}

/// `POST /api/v1/preview-link {"for": "1h"}`: a path on the live listener
/// that pins the browser opening it to the idle side.
async fn preview_link(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
    let (path, side) = state
        .router
        .preview_link(d.as_secs())
        .map_err(|e| ApiError::conflict("no_sessions", e))?;
    let listener = state.router.listener_addr("proxy");
    Ok(Json(serde_json::json!({
        "path": path,
        "url": listener.map(|a| format!("http://{a}{path}")),
        "side": side,
        "expires_in_secs": d.as_secs(),
    }))
    .into_response())
}

/// `POST /api/v1/cluster/forget {"node": NAME}`: a LOST node is no longer
/// listed (refused for a node that reports).
async fn cluster_forget(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: serde_json::Value = parse_body(&body)?;
    let Some(node) = body["node"].as_str() else {
        return Err(ApiError::bad_request(
            "field \"node\": the name of a LOST node",
        ));
    };
    state
        .router
        .forget_node(node)
        .await
        .map_err(|why| ApiError::conflict("not_lost", why))?;
    Ok(Json(serde_json::json!({ "forgotten": node })).into_response())
}

/// `POST /api/v1/upgrade {"binary": PATH?}`: a new process on our sockets;
/// the answer comes once it serves (200) or once it failed and this one
/// serves on (500, with why).
async fn upgrade(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: crate::types::UpgradeBody = if body.is_empty() {
        Default::default()
    } else {
        parse_body(&body)?
    };
    let Some(control) = &state.control else {
        return Err(ApiError::conflict(
            "no_upgrade",
            "this process cannot hand over (not started by `bluegreen serve`)",
        ));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let ready_timeout = match body.ready_timeout.as_deref() {
        None => None,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d)
                if d >= std::time::Duration::from_secs(1)
                    && d <= std::time::Duration::from_secs(3600) =>
            {
                Some(d)
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "ready_timeout {t:?}: a duration from 1s to 1h, like \"2m\""
                )))
            }
        },
    };
    control
        .send(Control::Upgrade {
            binary: body.binary.map(std::path::PathBuf::from),
            ready_timeout,
            reply,
        })
        .await
        .map_err(|_| ApiError::conflict("shutting_down", "the router is shutting down"))?;
    match answer.await {
        Ok(Ok(done)) => Ok(Json(done).into_response()),
        Ok(Err(why)) if why.contains("already in progress") => {
            Err(ApiError::conflict("upgrade_in_progress", why))
        }
        Ok(Err(why)) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "upgrade_failed",
            message: why,
        }),
        Err(_) => Err(ApiError::conflict(
            "shutting_down",
            "the router is shutting down",
        )),
    }
}

/// `POST /api/v1/reload`: the config file read again; 200 with what
/// changed, 422 with every problem when it does not validate (nothing
/// changes then).
async fn reload(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(control) = &state.control else {
        return Err(ApiError::conflict(
            "no_reload",
            "this process cannot reload (not started by `bluegreen serve`)",
        ));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    control
        .send(Control::Reload { reply })
        .await
        .map_err(|_| ApiError::conflict("shutting_down", "the router is shutting down"))?;
    match answer.await {
        Ok(Ok(done)) => Ok(Json(done).into_response()),
        Ok(Err(crate::lifecycle::ReloadError::InvalidConfig(why))) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_config",
            message: why,
        }),
        Ok(Err(crate::lifecycle::ReloadError::Failed(why))) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "reload_failed",
            message: why,
        }),
        Err(_) => Err(ApiError::conflict(
            "shutting_down",
            "the router is shutting down",
        )),
    }
}

async fn switch(
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

async fn rollback(
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

async fn deploy(
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

async fn deploys(State(state): State<AppState>) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    Ok(
        Json(serde_json::json!({"deploys": p.history().await, "releases": p.sides().await}))
            .into_response(),
    )
}

async fn current_deploy(State(state): State<AppState>) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    match p.current().await {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::not_found(
            "/api/v1/deploys/current (no deploy yet)",
        )),
    }
}

async fn one_deploy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = state.pipeline()?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("deploy id {id:?} is not a number")))?;
    Ok(Json(p.get(id).await?).into_response())
}

async fn promote(State(state): State<AppState>) -> Result<Response, ApiError> {
    let record = state.pipeline()?.promote().await?;
    Ok(Json(record).into_response())
}

async fn abort(
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

async fn record_start(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
    let status = state
        .router
        .start_recording(&body.to, options)
        .await
        .map_err(|message| ApiError {
            status: StatusCode::CONFLICT,
            code: "record_refused",
            message,
        })?;
    Ok(Json(status).into_response())
}

async fn record_stop(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state
        .router
        .stop_recording()
        .await
        .map_err(|message| ApiError {
            status: StatusCode::CONFLICT,
            code: "not_recording",
            message,
        })?;
    Ok(Json(status).into_response())
}

async fn record_status(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"recording": state.router.recording()})).into_response()
}

async fn shadow_start(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
    let shadow = state
        .router
        .start_shadow(options)
        .await
        .map_err(|message| ApiError {
            status: StatusCode::CONFLICT,
            code: "shadow_refused",
            message,
        })?;
    Ok(Json(serde_json::json!({"shadow": shadow.report()})).into_response())
}

async fn shadow_stop(State(state): State<AppState>) -> Result<Response, ApiError> {
    let shadow = state
        .router
        .stop_shadow()
        .await
        .map_err(|message| ApiError {
            status: StatusCode::CONFLICT,
            code: "not_shadowing",
            message,
        })?;
    Ok(Json(serde_json::json!({"shadow": shadow.report()})).into_response())
}

/// An intended difference: left out of the running shadow run's report and
/// gate (what was counted too) and of every later run in this process;
/// recorded in the running deploy's log. In a cluster, on the node that
/// runs the deploy (its run is the one judged).
async fn shadow_accept(
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

/// `GET /api/v1/migrations`: every migration file, applied or pending.
async fn migrations(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.pipeline()?.migrations().await?).into_response())
}

/// `POST /api/v1/migrations/contract`: the live release's contract files.
async fn migrations_contract(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: crate::types::ContractBody = parse_body(&body)?;
    let who = actor(&headers, &body.actor)?;
    let message = state.pipeline()?.contract(body.force, who).await?;
    Ok(Json(serde_json::json!({ "message": message })).into_response())
}

async fn shadow_report(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"shadow": state.router.shadow().map(|s| s.report())})).into_response()
}
