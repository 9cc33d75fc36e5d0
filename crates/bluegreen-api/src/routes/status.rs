//! Read-only views: readiness, status, the dashboard's files, metrics, the
//! per-second series, the event stream, history.

use super::*;

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
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

pub(super) async fn status(State(state): State<AppState>) -> Response {
    Json(status_value(&state).await).into_response()
}

/// The router's status, with each side's release and the current deploy
/// when there is a pipeline.
pub(super) async fn status_value(state: &AppState) -> StatusView {
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

pub(super) const INDEX_HTML: &str = include_str!("../../assets/index.html");

pub(super) const APP_JS: &str = include_str!("../../assets/app.js");

pub(super) const STYLE_CSS: &str = include_str!("../../assets/style.css");

/// A dashboard file: no token needed (it holds no data), never cached across
/// upgrades, and a strict content policy (the page only talks to this origin).
pub(super) fn page(body: &'static str, content_type: &'static str) -> Response {
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

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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

pub(super) async fn series(State(state): State<AppState>) -> Response {
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
pub(super) async fn events(State(state): State<AppState>) -> Response {
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

pub(super) async fn history(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({"switches": state.router.history().await})).into_response()
}
