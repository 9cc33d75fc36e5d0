//! A small admin API client for the CLI (and tests): JSON in, JSON out,
//! API errors turned into readable messages.

use bluegreen_core::error_chain;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Talks to one router's admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    actor: String,
    /// The longest one call may take, answer included.
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// HTTP, or HTTPS checked against `roots`.
fn https(roots: RootCertStore) -> HttpsConnector<HttpConnector> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build()
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {url}: {reason} (is `bluegreen serve` running? set --admin or BLUEGREEN_ADMIN)")]
    Unreachable { url: String, reason: String },
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("{0}")]
    Setup(String),
}

impl AdminClient {
    /// `base` is like `http://127.0.0.1:9901` (or `https://…`, checked
    /// against the system's roots).
    pub fn new(base: &str, token: Option<String>, actor: String) -> AdminClient {
        Self::with_ca(base, token, actor, None).expect("without a CA file nothing is read")
    }

    /// The same, trusting the PEM certificates in `ca` (a private admin
    /// certificate, or its CA) instead of the system's roots.
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        actor: String,
        ca: Option<&std::path::Path>,
    ) -> Result<AdminClient, ClientError> {
        let unreadable = |reason: String| ClientError::Setup(reason);
        let roots = match ca {
            Some(path) => bluegreen_router::tls::roots_from_pem(path)
                .map_err(|e| unreadable(format!("--admin-ca {e}")))?,
            None => {
                let mut roots = RootCertStore::empty();
                if base.starts_with("https:") {
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                }
                roots
            }
        };
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            actor,
            timeout: Duration::from_secs(60),
            client: Client::builder(TokioExecutor::new()).build(https(roots)),
        })
    }

    /// The same client, waiting up to `limit` for each answer (a call whose
    /// server works longer than 60 s, such as an upgrade, says so).
    pub fn with_timeout(mut self, limit: Duration) -> AdminClient {
        self.timeout = limit;
        self
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// POST a JSON document and read the JSON answer.
    /// POSTs `body` (one of [`crate::types`], or any JSON) as JSON.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Unreachable {
            url: format!("{}{path}", self.base),
            reason: format!("cannot encode the request body: {e}"),
        })?;
        self.call(Method::POST, path, Some(body)).await
    }

    /// Follows the event stream (`GET /api/v1/events`, server-sent
    /// events): `status` first, then every change as it happens.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let (url, resp) = self.send(Method::GET, "/api/v1/events", None).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(EventStream {
            url,
            body: resp.into_body(),
            buffer: Vec::new(),
        })
    }

    /// Sends a request; the answer's head once it arrives (within 60 s).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(String, http::Response<hyper::body::Incoming>), ClientError> {
        let url = format!("{}{}", self.base, path);
        let uri: Uri = url.parse().map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: format!("invalid URL: {e}"),
        })?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-bluegreen-actor", &self.actor);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v).expect("JSON serialises"))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Protocol {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.clone(),
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            })?
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        Ok((url, resp))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (url, resp) = self.send(method, path, body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            url,
            reason: format!("invalid JSON: {e}"),
        })
    }
}

/// An API error answer, read into its code and message.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    ClientError::Api {
        status,
        code: err
            .and_then(|e| e.get("code"))
            .and_then(|c| c.as_str())
            .unwrap_or("unknown")
            .to_string(),
        message: err
            .and_then(|e| e.get("message"))
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
    }
}

/// Longest silence of a healthy event stream (its keep-alive is every 15 s).
const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// One server-sent event: its name and its JSON data.
#[derive(Debug, Clone)]
pub struct ServerEvent {
    pub name: String,
    pub data: serde_json::Value,
}

/// The admin API's event stream, event by event.
pub struct EventStream {
    url: String,
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next event; `None` when the stream ended (the router stopped or
    /// handed over), an error when it broke.
    pub async fn next(&mut self) -> Option<Result<ServerEvent, ClientError>> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut name, mut data) = ("message".to_string(), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(
                    serde_json::from_str(&data)
                        .map(|data| ServerEvent { name, data })
                        .map_err(|e| ClientError::Protocol {
                            url: self.url.clone(),
                            reason: format!("an event that is not JSON: {e}"),
                        }),
                );
            }
            // The router says something (a keep-alive) every 15 s: silence
            // for three of those is a connection gone without a word.
            let frame = match tokio::time::timeout(STREAM_SILENCE, self.body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    return Some(Err(ClientError::Unreachable {
                        url: self.url.clone(),
                        reason: format!("the event stream said nothing for {STREAM_SILENCE:?}"),
                    }))
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        // Line ends as `\n` only (a proxy may have made them CRLF).
                        for &b in d.iter() {
                            match b {
                                b'\r' => {}
                                _ => self.buffer.push(b),
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    return Some(Err(ClientError::Unreachable {
                        url: self.url.clone(),
                        reason: error_chain(&e),
                    }))
                }
                None => return None,
            }
        }
    }
}
