//! Smoke tests: declarative HTTP checks sent through the preview listener (so
//! they reach only the idle side), and commands.

use bluegreen_core::config::deploy::{fill, HttpCheck};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Instant;

/// Body bytes quoted in a failure message.
const QUOTE: usize = 300;

/// A smoke test that did not pass: its name and what happened (for an
/// HTTP check, the request and what came back).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("smoke test {check:?} failed: {what}")]
pub struct SmokeFailure {
    pub check: String,
    pub what: String,
}

/// Runs one HTTP check against `preview`. Ok carries a one-line summary.
pub async fn http_check(
    check: &HttpCheck,
    preview: SocketAddr,
    vars: &[(&str, &str)],
) -> Result<String, SmokeFailure> {
    let path = fill(&check.path, vars);
    let request_line = format!("{} {path}", check.method);
    let fail = |what: String| SmokeFailure {
        check: check.name.clone(),
        what: format!("{request_line} → {what}"),
    };

    let method = Method::from_bytes(check.method.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{preview}{path}"))
        .header("x-bluegreen-smoke", check.name.as_str());
    for (k, v) in &check.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| fail(format!("header {k}: {e}")))?;
        let value =
            HeaderValue::from_str(&fill(v, vars)).map_err(|e| fail(format!("header {k}: {e}")))?;
        req = req.header(name, value);
    }
    let body = check
        .body
        .as_deref()
        .map(|b| fill(b, vars))
        .unwrap_or_default();
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(e.to_string()))?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = Instant::now();
    let resp = tokio::time::timeout(check.timeout, client.request(req))
        .await
        .map_err(|_| fail(format!("no response within {:?}", check.timeout)))?
        .map_err(|e| fail(bluegreen_core::error_chain(&e)))?;
    let latency = started.elapsed();
    let status = resp.status().as_u16();
    let bytes = tokio::time::timeout(check.timeout, resp.into_body().collect())
        .await
        .map_err(|_| fail("body did not arrive in time".into()))?
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let quoted = || {
        let t: String = text.chars().take(QUOTE).collect();
        format!("{t:?}{}", if text.len() > QUOTE { " (cut)" } else { "" })
    };
    let ms = latency.as_secs_f64() * 1000.0;

    if status != check.expect_status {
        return Err(fail(format!(
            "{status} (expected {}) in {ms:.1} ms; body: {}",
            check.expect_status,
            quoted()
        )));
    }
    if let Some(needle) = &check.expect_body_contains {
        let needle = fill(needle, vars);
        if !text.contains(&needle) {
            return Err(fail(format!(
                "{status}, but the body does not contain {needle:?}; body: {}",
                quoted()
            )));
        }
    }
    if !check.expect_json.is_empty() {
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "{status}, but the body is not JSON ({e}); body: {}",
                quoted()
            ))
        })?;
        for (pointer, expected) in &check.expect_json {
            let expected = match expected {
                serde_json::Value::String(s) => serde_json::Value::String(fill(s, vars)),
                other => other.clone(),
            };
            let got = json.pointer(pointer);
            if got != Some(&expected) {
                return Err(fail(format!(
                    "{status}, but JSON {pointer} is {} (expected {expected})",
                    got.map(|g| g.to_string())
                        .unwrap_or_else(|| "missing".into())
                )));
            }
        }
    }
    if let Some(max) = check.max_latency {
        if latency > max {
            return Err(fail(format!(
                "{status} in {ms:.1} ms, slower than max_latency {:.1} ms",
                max.as_secs_f64() * 1000.0
            )));
        }
    }
    Ok(format!(
        "{:?}: {request_line} → {status} in {ms:.1} ms",
        check.name
    ))
}
