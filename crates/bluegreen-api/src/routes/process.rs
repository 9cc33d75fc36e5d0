//! The serving process: a hitless upgrade and a config reload.

use super::*;

/// `POST /api/v1/upgrade {"binary": PATH?}`: a new process on our sockets;
/// the answer comes once it serves (200) or once it failed and this one
/// serves on (500, with why).
pub(super) async fn upgrade(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
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
pub(super) async fn reload(State(state): State<AppState>) -> Result<Response, ApiError> {
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
