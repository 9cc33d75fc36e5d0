//! API errors: one JSON shape, `{"error": {"code", "message"}}`, with the
//! status chosen in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bluegreen_pipeline::migrate::MigrateError;
use bluegreen_pipeline::PipelineError;
use bluegreen_router::{ControlError, SwitchError};

/// An error answer from the admin API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// 400 with a message that says what was wrong with the request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// 401 for a missing or wrong token.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "missing or invalid bearer token (Authorization: Bearer <token>)".into(),
        }
    }

    /// 404 for an unknown route.
    pub fn not_found(path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no such endpoint: {path}"),
        }
    }
}

impl From<SwitchError> for ApiError {
    fn from(e: SwitchError) -> ApiError {
        let (status, code) = match &e {
            SwitchError::Unhealthy { .. } => (StatusCode::CONFLICT, "target_unhealthy"),
            SwitchError::NoHistory => (StatusCode::CONFLICT, "no_history"),
            SwitchError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "persist_failed"),
            SwitchError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unreachable"),
            SwitchError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            // The router the user runs (nginx) refused it and was put back.
            SwitchError::Router(_) => (StatusCode::BAD_GATEWAY, "router_refused"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

/// The one place a control refusal becomes a status: the state as it is
/// refused the call (409 with its code), or the store did (500, or 503
/// when a cluster's store is out of reach, or 409 when another node
/// changed the state first).
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let (status, code) = match &e {
            ControlError::Refused { code, .. } => (StatusCode::CONFLICT, *code),
            ControlError::Failed {
                code: "router_refused",
                ..
            } => (StatusCode::BAD_GATEWAY, "router_refused"),
            ControlError::Failed { code, .. } => (StatusCode::INTERNAL_SERVER_ERROR, *code),
            ControlError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "persist_failed"),
            ControlError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unreachable"),
            ControlError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> ApiError {
        let (status, code) = match &e {
            PipelineError::Switch(s) => return ApiError::from(s.clone()),
            PipelineError::Busy { .. } | PipelineError::Finishing(_) => {
                (StatusCode::CONFLICT, "deploy_in_progress")
            }
            PipelineError::BadInput(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            PipelineError::NotWaiting => (StatusCode::CONFLICT, "not_waiting"),
            // Going back past a contract migration: the side may well be
            // running, its release expects a schema that is gone.
            PipelineError::Stopped(why) if bluegreen_core::rollback::is_past_contract(why) => {
                (StatusCode::CONFLICT, "past_contract")
            }
            PipelineError::Stopped(_) => (StatusCode::CONFLICT, "side_stopped"),
            PipelineError::NoDeploy => (StatusCode::CONFLICT, "no_deploy"),
            PipelineError::TooLateToAbort(_) => (StatusCode::CONFLICT, "too_late"),
            PipelineError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            PipelineError::Elsewhere(_) => (StatusCode::CONFLICT, "deploy_elsewhere"),
            // The migrations' database out of reach, or not set up here.
            PipelineError::Migrate(MigrateError::Database(_) | MigrateError::Setup(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            PipelineError::Migrate(_) => (StatusCode::CONFLICT, "migrations_refused"),
            // A cluster's store out of reach: the node fails static.
            PipelineError::Store(bluegreen_store::StoreError::Etcd { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unreachable")
            }
            PipelineError::Store(bluegreen_store::StoreError::Conflict { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            PipelineError::Store(_) | PipelineError::Supervisor(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &e {
            PipelineError::Store(bluegreen_store::StoreError::Etcd { .. }) => format!(
                "{e}: this node serves the last applied state and refuses changes (switches, rollbacks, deploys) until etcd is back"
            ),
            _ => e.to_string(),
        };
        ApiError {
            status,
            code,
            message,
        }
    }
}

impl ApiError {
    /// 409: the request conflicts with what the process is doing.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
        }
    }

    /// 409 for pipeline calls on a router without a `[deploy]` table.
    pub fn no_pipeline() -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "no_pipeline",
            message: "this router has no deploy pipeline: add a [deploy] table to its config"
                .into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that refused a change is never reported as the request's
    /// fault: 500 when it failed, 503 when a cluster's store is out of
    /// reach, 409 `conflict` when another node was first.
    #[test]
    fn control_errors_map_to_one_status_each() {
        for (e, status, code) in [
            (
                ControlError::refused("already_paused", "traffic is already paused"),
                StatusCode::CONFLICT,
                "already_paused",
            ),
            (
                ControlError::Failed {
                    code: "reload_failed",
                    message: "a CA file could not be read".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload_failed",
            ),
            (
                ControlError::Persist("disk full".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "persist_failed",
            ),
            (
                ControlError::Unavailable("etcd: connection refused".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unreachable",
            ),
            (
                ControlError::Conflict("revision moved".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
        ] {
            let message = e.to_string();
            let api = ApiError::from(e);
            assert_eq!((api.status, api.code), (status, code));
            assert_eq!(api.message, message);
        }
    }
}
