//! The admin routes in process, through axum's `oneshot`: each refusal of
//! the control comes back with its status and code from the one mapping
//! (`error.rs`), bad input is a 400 naming the field and changes nothing,
//! and the token and method checks hold. The router is real (its file store
//! in a temp dir); no listener and no socket, and a pipeline only where a
//! test says so.

use axum::body::Body;
use bluegreen_core::config::Config;
use bluegreen_router::Router;
use bluegreen_store::FileStore;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;

const TOKEN: &str = "route-test-token";

struct Api {
    app: axum::Router,
    router: Arc<Router>,
    _dir: tempfile::TempDir,
}

/// A router with both sides on addresses nothing listens on (so no side is
/// healthy), `extra` appended to its config.
fn api(extra: &str) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [environments.blue]\nupstreams = [\"127.0.0.1:9\"]\n\
         [environments.green]\nupstreams = [\"127.0.0.2:9\"]\n{extra}"
    );
    let config = Config::parse(&text, "routes.toml", dir.path()).unwrap();
    let store = Arc::new(FileStore::open(&dir.path().join("state")).unwrap());
    let router = Router::new(config, store).unwrap();
    Api {
        app: bluegreen_api::app(router.clone(), None, TOKEN, None),
        router,
        _dir: dir,
    }
}

impl Api {
    /// Sends one request; the status and the JSON body (`null` when none).
    async fn call(&self, method: &str, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
        self.call_with(method, path, body, Some(TOKEN)).await.0
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> ((StatusCode, serde_json::Value), http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        ((parts.status, json), parts.headers)
    }
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn pause_and_resume_refuse_what_does_not_fit_the_state_with_their_codes() {
    let api = api("");
    let (s, v) = api
        .call("POST", "/api/v1/pause", r#"{"timeout": "5s"}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(api.router.paused().is_some());
    let (s, v) = api.call("POST", "/api/v1/pause", "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "already_paused"),
        "{v}"
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already paused"));
    let (s, _) = api.call("POST", "/api/v1/resume", "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api.call("POST", "/api/v1/resume", "").await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "not_paused"), "{v}");
    assert!(api.router.paused().is_none());
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let api = api("");
    for (path, body, field) in [
        ("/api/v1/pause", r#"{"timeout": "forever"}"#, "timeout"),
        ("/api/v1/pause", r#"{"limit": 0}"#, "limit"),
        (
            "/api/v1/weight",
            r#"{"side": "purple", "percent": 10}"#,
            "side",
        ),
        (
            "/api/v1/weight",
            r#"{"side": "green", "percent": 100}"#,
            "percent",
        ),
        ("/api/v1/preview-link", r#"{"for": "30d"}"#, "for"),
        ("/api/v1/record/start", r#"{"to": "../etc/passwd"}"#, "to"),
        ("/api/v1/shadow/start", r#"{"percent": 101}"#, "percent"),
    ] {
        let (s, v) = api.call("POST", path, body).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{path} {body}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("\"{field}\"")),
            "{path}: {message}"
        );
    }
    let (s, v) = api.call("POST", "/api/v1/pause", "{not json").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    assert!(api.router.paused().is_none(), "nothing changed");
    assert!(api.router.split().is_none());
    assert!(api.router.recording().is_none());
}

#[tokio::test]
async fn refusals_of_the_control_come_back_with_their_own_codes() {
    let api = api("");
    for (path, body, want) in [
        // Blue is live: a weight goes to the idle side.
        (
            "/api/v1/weight",
            r#"{"side": "blue", "percent": 10}"#,
            "weight_refused",
        ),
        // Green has no healthy upstream.
        (
            "/api/v1/weight",
            r#"{"side": "green", "percent": 10}"#,
            "weight_refused",
        ),
        ("/api/v1/preview-link", "", "no_sessions"),
        ("/api/v1/record/stop", "", "not_recording"),
        ("/api/v1/shadow/stop", "", "not_shadowing"),
        ("/api/v1/shadow/start", "{}", "shadow_refused"),
        ("/api/v1/cluster/forget", r#"{"node": "n1"}"#, "not_lost"),
        ("/api/v1/promote", "", "no_pipeline"),
    ] {
        let (s, v) = api.call("POST", path, body).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::CONFLICT, want),
            "{path} {body}: {v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(api.router.split().is_none());
    assert!(api.router.shadow().is_none());
}

#[tokio::test]
async fn a_recording_started_twice_is_refused_and_stops_once() {
    let api = api("");
    let (s, v) = api
        .call("POST", "/api/v1/record/start", r#"{"to": "one.jsonl"}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call("POST", "/api/v1/record/start", r#"{"to": "two.jsonl"}"#)
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "record_refused"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one.jsonl"),
        "{v}"
    );
    let (s, _) = api.call("POST", "/api/v1/record/stop", "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api.call("POST", "/api/v1/record/stop", "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "not_recording"),
        "{v}"
    );
}

#[tokio::test]
async fn maintenance_is_persisted_and_shown_in_status() {
    let api = api("");
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/maintenance",
            r#"{"on": true, "message": "back at noon", "retry_after": 60}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["maintenance"]["message"], "back at noon");
    let (s, status) = api.call("GET", "/api/v1/status", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["maintenance"]["message"], "back at noon", "{status}");
    let (s, v) = api
        .call("POST", "/api/v1/maintenance", r#"{"on": false}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(api.router.maintenance().is_none());
}

#[tokio::test]
async fn the_token_the_route_and_the_method_are_checked() {
    let api = api("");
    for token in [None, Some("wrong")] {
        let ((s, v), headers) = api.call_with("POST", "/api/v1/pause", "", token).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{v}"
        );
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    assert!(api.router.paused().is_none(), "nothing changed");
    let ((s, _), _) = api.call_with("GET", "/metrics", "", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let ((s, _), _) = api.call_with("GET", "/livez", "", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api.call("GET", "/api/v1/nothing-here", "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    let (s, v) = api.call("DELETE", "/api/v1/pause", "").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        "{v}"
    );
}

/// `GET /migrations` with the database's variable not set in the router's
/// environment: 503 `database_unavailable`, naming the variable (not a
/// conflict: nothing about the release is wrong).
#[tokio::test]
async fn migration_status_without_its_database_is_unavailable_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [environments.blue]\nupstreams = [\"127.0.0.1:9\"]\n\
         [environments.green]\nupstreams = [\"127.0.0.2:9\"]\n\
         [deploy]\n[deploy.hooks]\ndeploy = \"true\"\n\
         [deploy.migrations]\ndir = \"migrations\"\n\
         database_url_env = \"BLUEGREEN_ROUTES_TEST_NEVER_SET\"\n";
    let config = Config::parse(text, "routes.toml", dir.path()).unwrap();
    let deploy = config.deploy.clone().unwrap();
    let store = Arc::new(FileStore::open(&dir.path().join("state")).unwrap());
    let router = Router::new(config, store.clone()).unwrap();
    let pipeline =
        bluegreen_pipeline::Pipeline::new(router.clone(), store, deploy, dir.path()).unwrap();
    let api = Api {
        app: bluegreen_api::app(router.clone(), Some(pipeline), TOKEN, None),
        router,
        _dir: dir,
    };
    let (s, v) = api.call("GET", "/api/v1/migrations", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(code(&v), "database_unavailable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("$BLUEGREEN_ROUTES_TEST_NEVER_SET is not set"),
        "{message}"
    );
}
