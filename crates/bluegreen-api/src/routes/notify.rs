//! `[[notify]]` hooks: a sample notice on demand.

use super::*;

/// `POST /api/v1/notify/test {"hook": NAME}`: sends a sample notice to one
/// hook now (not through the outbox) and answers with what the receiver
/// said.
pub(super) async fn notify_test(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: serde_json::Value = parse_body(&body)?;
    let Some(hook) = body["hook"].as_str() else {
        return Err(ApiError::bad_request(
            "field \"hook\": the name of a [[notify]] entry",
        ));
    };
    let config = state.router.config();
    if !config.notify.iter().any(|h| h.name == hook) {
        let names: Vec<&str> = config.notify.iter().map(|h| h.name.as_str()).collect();
        return Err(ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            code: "unknown_hook",
            message: format!("no [[notify]] entry named {hook:?} (the hooks: {names:?})"),
        });
    }
    let Some(notifier) = state.router.notifier() else {
        return Err(ApiError::conflict(
            "notify_unavailable",
            "the notifier is not running (its outbox could not be read: see the log)",
        ));
    };
    match notifier.test(hook).await {
        Ok(a) => Ok(
            Json(serde_json::json!({ "hook": hook, "status": a.status, "body": a.body }))
                .into_response(),
        ),
        Err(e) => Err(ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            code: "notify_failed",
            message: format!("{hook}: {e}"),
        }),
    }
}
