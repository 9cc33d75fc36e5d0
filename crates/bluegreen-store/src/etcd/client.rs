//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`), on the
//! hyper client the rest of bluegreen already builds. The gateway needs no
//! generated gRPC code, so building bluegreen needs no `protoc`; the few
//! calls we make (range, put, txn, leases, watch) are plain JSON.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bluegreen_core::config::EtcdConfig;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client as Http};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long one call may take before the next endpoint is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("{0}")]
    Unreachable(String),
    #[error("etcd refused {call}: {message}")]
    Refused { call: String, message: String },
    #[error("etcd answered {call} with something unexpected: {reason}")]
    Protocol { call: String, reason: String },
}

/// One key and its value as etcd returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Kv {
    #[serde(deserialize_with = "b64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "b64")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "num")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "num")]
    pub create_revision: i64,
}

/// A watch event: a put (with the value) or a delete.
#[derive(Debug, Clone)]
pub struct Event {
    pub kv: Kv,
    pub deleted: bool,
}

/// What one message of a watch stream says.
#[derive(Debug)]
pub enum WatchMessage {
    Events {
        revision: i64,
        events: Vec<Event>,
    },
    /// The revision asked for was compacted away: read everything anew.
    Compacted(i64),
    Canceled(String),
}

/// Talks to the endpoints of one etcd cluster.
pub struct Client {
    endpoints: Vec<String>,
    http: Http<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The endpoint that answered last, tried first.
    current: AtomicUsize,
    auth: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

impl Client {
    /// A client for `config` (nothing is contacted yet).
    pub fn new(config: &EtcdConfig) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        let mut client_auth = None;
        if let Some(tls) = &config.tls {
            if let Some(ca) = &tls.ca {
                roots = crate::roots_from_pem(ca).map_err(|e| format!("state.etcd.tls.ca {e}"))?;
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                use rustls::pki_types::pem::PemObject;
                let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        format!(
                            "state.etcd.tls.cert {}: {}",
                            cert.display(),
                            crate::pem_error(&e)
                        )
                    })?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!(
                        "state.etcd.tls.key {}: {}",
                        key.display(),
                        crate::pem_error(&e)
                    )
                })?;
                client_auth = Some((chain, key));
            }
        }
        if roots.is_empty() && config.endpoints.iter().any(|e| e.starts_with("https:")) {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let tls = match client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("state.etcd.tls: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let auth = match (&config.username, &config.password_env) {
            (Some(user), Some(env)) => Some((
                user.clone(),
                std::env::var(env).map_err(|_| {
                    format!("state.etcd.password_env: the variable {env} is not set")
                })?,
            )),
            (Some(user), None) => Some((user.clone(), String::new())),
            _ => None,
        };
        Ok(Client {
            endpoints: config
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            http: Http::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            current: AtomicUsize::new(0),
            auth,
            token: Mutex::new(None),
        })
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> String {
        self.endpoints.join(", ")
    }

    /// One JSON call, on the endpoint that answered last, then the others.
    /// A cluster in the middle of electing a leader is given a moment (a
    /// member that died was often the leader).
    pub async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.call_once(path, &body).await {
                Err(EtcdError::Unreachable(why)) if electing(&why) && pause < CALL_TIMEOUT => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            match self.call_at(at, path, body).await {
                Ok(v) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(EtcdError::Unreachable(why)) => reasons.push(why),
                Err(e) => return Err(e),
            }
        }
        Err(EtcdError::Unreachable(reasons.join("; ")))
    }

    async fn call_at(&self, at: usize, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let base = &self.endpoints[at];
        for attempt in 0..2 {
            let token = self.token(at).await?;
            let (status, value) = self.post(base, path, body, token.as_deref()).await?;
            if status.is_success() {
                return Ok(value);
            }
            let message = value
                .get("error")
                .or_else(|| value.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no detail")
                .to_string();
            // An expired auth token: authenticate again once.
            if attempt == 0 && self.auth.is_some() && message.contains("token") {
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                continue;
            }
            // A member without a leader cannot answer: try another one.
            if status == StatusCode::SERVICE_UNAVAILABLE || electing(&message) {
                return Err(EtcdError::Unreachable(format!("{base}: {message}")));
            }
            return Err(EtcdError::Refused {
                call: path.to_string(),
                message: format!("{message} (HTTP {status} from {base})"),
            });
        }
        unreachable!("the loop returns")
    }

    async fn token(&self, at: usize) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.auth else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(Some(t));
        }
        let base = &self.endpoints[at];
        let (status, v) = self
            .post(
                base,
                "/v3/auth/authenticate",
                &json!({"name": user, "password": password}),
                None,
            )
            .await?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|_| status.is_success());
        let Some(token) = token else {
            return Err(EtcdError::Refused {
                call: "authenticate".into(),
                message: format!(
                    "user {user:?} was not accepted by {base}: {} (check state.etcd.username and password_env)",
                    v.get("error").and_then(Value::as_str).unwrap_or("no detail")
                ),
            });
        };
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
        Ok(Some(token.to_string()))
    }

    async fn post(
        &self,
        base: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(StatusCode, Value), EtcdError> {
        let response = tokio::time::timeout(CALL_TIMEOUT, async {
            let res = self.http.request(request(base, path, body, token)).await?;
            let status = res.status();
            let bytes = res.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        })
        .await
        .map_err(|_| EtcdError::Unreachable(format!("{base}: no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|e| {
            EtcdError::Unreachable(format!("{base}: {}", bluegreen_core::error_chain(&*e)))
        })?;
        let value = serde_json::from_slice(&response.1).map_err(|e| EtcdError::Protocol {
            call: path.to_string(),
            reason: format!("{e} (HTTP {})", response.0),
        })?;
        Ok((response.0, value))
    }

    /// Values of `key` (or every key under it, with `prefix`), and the
    /// revision they were read at.
    pub async fn range(&self, key: &str, prefix: bool) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut body = json!({"key": B64.encode(key)});
        if prefix {
            body["range_end"] = json!(B64.encode(prefix_end(key)));
        }
        let v = self.call("/v3/kv/range", body).await?;
        let kvs = parse(&v, "kvs", "range").unwrap_or_default();
        Ok((revision(&v), kvs))
    }

    /// Writes `value` under `key` if its last change is at `expected`
    /// (0: it must not exist). `Ok(Some(revision))` when written,
    /// `Ok(None)` when someone else wrote first.
    pub async fn put_if(
        &self,
        key: &str,
        value: &[u8],
        expected: i64,
        lease: Option<i64>,
    ) -> Result<Option<i64>, EtcdError> {
        let compare = if expected == 0 {
            json!({"key": B64.encode(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"})
        } else {
            json!({"key": B64.encode(key), "target": "MOD", "mod_revision": expected.to_string(), "result": "EQUAL"})
        };
        self.txn(vec![compare], vec![put_op(key, value, lease)])
            .await
    }

    /// A transaction: `success` runs when every compare holds.
    /// `Ok(Some(revision))` when it did, `Ok(None)` otherwise.
    pub async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
    ) -> Result<Option<i64>, EtcdError> {
        let v = self
            .call(
                "/v3/kv/txn",
                json!({"compare": compare, "success": success}),
            )
            .await?;
        let done = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        Ok(done.then(|| revision(&v)))
    }

    /// Writes unconditionally (with a lease: the key goes when it does).
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/kv/put",
                put_op(key, value, lease)["request_put"].clone(),
            )
            .await?;
        Ok(revision(&v))
    }

    /// Removes a key.
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", json!({"key": B64.encode(key)}))
            .await
            .map(|_| ())
    }

    /// Removes a key if it still holds `value`.
    pub async fn delete_if(&self, key: &str, value: &[u8]) -> Result<(), EtcdError> {
        let same = json!({"key": B64.encode(key), "target": "VALUE", "value": B64.encode(value), "result": "EQUAL"});
        let delete = json!({"request_delete_range": {"key": B64.encode(key)}});
        self.txn(vec![same], vec![delete]).await.map(|_| ())
    }

    /// Moves `key` to `lease` if it still holds `value`; false if it does not.
    pub async fn reattach(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let same = json!({"key": B64.encode(key), "target": "VALUE", "value": B64.encode(value), "result": "EQUAL"});
        Ok(self
            .txn(vec![same], vec![put_op(key, value, Some(lease))])
            .await?
            .is_some())
    }

    /// A new lease of `ttl`.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/lease/grant",
                json!({"TTL": ttl.as_secs().max(2).to_string()}),
            )
            .await?;
        let id = num_field(&v, "ID");
        if id == 0 {
            return Err(EtcdError::Protocol {
                call: "lease grant".into(),
                reason: v.to_string(),
            });
        }
        Ok(id)
    }

    /// Renews a lease; false when it has expired already.
    pub async fn keep_alive(&self, id: i64) -> Result<bool, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        let result = v.get("result").unwrap_or(&v);
        Ok(num_field(result, "TTL") > 0)
    }

    /// Ends a lease now: its keys go at once.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }

    /// Forgets revisions before `revision` (tests, and operators' scripts).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string()}),
        )
        .await
        .map(|_| ())
    }

    /// The answering member's status: its version, the store's revision,
    /// the database's size on disk and the part of it in use.
    pub async fn status(&self) -> Result<MemberStatus, EtcdError> {
        let v = self.call("/v3/maintenance/status", json!({})).await?;
        let n = |k: &str| num_field(&v, k);
        Ok(MemberStatus {
            version: v
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            revision: revision(&v),
            db_size: n("dbSize"),
            db_size_in_use: n("dbSizeInUse"),
        })
    }

    /// Whether the history at `revision` is gone: a read there is refused
    /// as compacted (`Ok(false)` when it is still kept).
    pub async fn compacted_at(&self, key: &str, revision: i64) -> Result<bool, EtcdError> {
        let body = json!({"key": B64.encode(key), "revision": revision.to_string()});
        match self.call("/v3/kv/range", body).await {
            Ok(_) => Ok(false),
            Err(EtcdError::Refused { message, .. }) if message.contains("compacted") => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Opens a watch of every key under `prefix` from `start` on.
    pub async fn watch(&self, prefix: &str, start: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start.to_string(),
        }});
        let at = self.current.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..self.endpoints.len() {
            let at = (at + i) % self.endpoints.len();
            let base = &self.endpoints[at];
            let token = self.token(at).await?;
            // Only a member that has a leader may serve the watch (one cut
            // off from the others would go silent).
            let mut req = request(base, "/v3/watch", &body, token.as_deref());
            req.headers_mut().insert(
                "grpc-metadata-hasleader",
                http::HeaderValue::from_static("true"),
            );
            let res = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req)).await;
            match res {
                Ok(Ok(res)) if res.status().is_success() => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(Watch {
                        body: res.into_body(),
                        buffer: Vec::new(),
                    });
                }
                Ok(Ok(res)) => reasons.push(format!("{base}: HTTP {}", res.status())),
                Ok(Err(e)) => reasons.push(format!("{base}: {}", bluegreen_core::error_chain(&e))),
                Err(_) => reasons.push(format!("{base}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        Err(EtcdError::Unreachable(reasons.join("; ")))
    }
}

/// What `/v3/maintenance/status` says of the member that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub version: String,
    pub revision: i64,
    /// Bytes of the database file.
    pub db_size: i64,
    /// Bytes of it in use (the rest is freed by a defragmentation).
    pub db_size_in_use: i64,
}

/// A watch stream: JSON messages one after the other.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next message; an error when the stream broke.
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            if let Some(message) = self.parse()? {
                match message {
                    Some(m) => return Ok(m),
                    None => continue,
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(EtcdError::Unreachable(format!(
                        "watch broke: {}",
                        bluegreen_core::error_chain(&e)
                    )))
                }
                None => return Err(EtcdError::Unreachable("watch stream ended".into())),
            }
        }
    }

    /// One whole message off the buffer: `Some(None)` for one that says
    /// nothing to us (created, progress), `None` when more bytes are needed.
    #[allow(clippy::option_option)]
    fn parse(&mut self) -> Result<Option<Option<WatchMessage>>, EtcdError> {
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        let value = match stream.next() {
            None => return Ok(None),
            Some(Err(e)) if e.is_eof() => return Ok(None),
            Some(Err(e)) => {
                return Err(EtcdError::Protocol {
                    call: "watch".into(),
                    reason: e.to_string(),
                })
            }
            Some(Ok(v)) => v,
        };
        let used = stream.byte_offset();
        self.buffer.drain(..used);
        if let Some(e) = value.get("error") {
            return Err(EtcdError::Unreachable(format!("watch: {e}")));
        }
        let result = value.get("result").unwrap_or(&value);
        let compacted = num_field(result, "compact_revision");
        if compacted > 0 {
            return Ok(Some(Some(WatchMessage::Compacted(compacted))));
        }
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            let why = result
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or("canceled by etcd");
            return Ok(Some(Some(WatchMessage::Canceled(why.to_string()))));
        }
        let Some(events) = result.get("events").and_then(Value::as_array) else {
            return Ok(Some(None));
        };
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let kv: Kv = serde_json::from_value(e.get("kv").cloned().unwrap_or_default()).map_err(
                |err| EtcdError::Protocol {
                    call: "watch".into(),
                    reason: err.to_string(),
                },
            )?;
            let deleted = e.get("type").and_then(Value::as_str) == Some("DELETE");
            out.push(Event { kv, deleted });
        }
        Ok(Some(Some(WatchMessage::Events {
            revision: revision(result),
            events: out,
        })))
    }
}

/// etcd's answers while its members elect a leader.
fn electing(message: &str) -> bool {
    message.contains("leader changed") || message.contains("no leader")
}

fn request(base: &str, path: &str, body: &Value, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, t);
    }
    req.body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

fn put_op(key: &str, value: &[u8], lease: Option<i64>) -> Value {
    let mut put = json!({"key": B64.encode(key), "value": B64.encode(value)});
    if let Some(l) = lease {
        put["lease"] = json!(l.to_string());
    }
    json!({ "request_put": put })
}

/// The smallest key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn revision(v: &Value) -> i64 {
    v.get("header")
        .map(|h| num_field(h, "revision"))
        .unwrap_or(0)
}

/// etcd's JSON writes 64-bit numbers as strings.
fn num_field(v: &Value, name: &str) -> i64 {
    match v.get(name) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    v: &Value,
    field: &str,
    call: &str,
) -> Result<T, EtcdError> {
    serde_json::from_value(v.get(field).cloned().unwrap_or(Value::Null)).map_err(|e| {
        EtcdError::Protocol {
            call: call.into(),
            reason: e.to_string(),
        }
    })
}

fn b64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

fn num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(num_field(&json!({ "n": v }), "n"))
}
