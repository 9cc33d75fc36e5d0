//! One delivery attempt: the body in the hook's format, signed when the
//! hook has a secret, POSTed with a time limit. 2xx is delivered; anything
//! else (or no answer) is retried by the outbox.

use super::notice::Notice;
use bluegreen_core::config::notify::{Format, Hook};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use std::time::Duration;

/// The client every hook is posted with (http and https, the system's
/// roots).
pub type HookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn client() -> HookClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("the provider's protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The body `hook` gets for `notice`, and its content type.
pub fn body(hook: &Hook, notice: &Notice, node: &str) -> (String, &'static str) {
    match hook.format {
        Format::CloudEvents => {
            let time = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(notice.at_unix_ms),
            )
            .to_string();
            let mut v = serde_json::json!({
                "specversion": "1.0",
                "id": notice.id,
                "source": format!("bluegreen/{node}"),
                "type": format!("dev.bluegreen.{}", notice.kind),
                "time": time,
                "datacontenttype": "application/json",
                "data": {
                    "kind": notice.kind,
                    "summary": notice.summary,
                    "facts": notice.data,
                },
            });
            if let Some(s) = &notice.subject {
                v["subject"] = serde_json::Value::String(s.clone());
            }
            (v.to_string(), "application/cloudevents+json")
        }
        Format::Slack => {
            let icon = match tone(&notice.kind) {
                Tone::Good => ":large_green_circle:",
                Tone::Info => ":large_blue_circle:",
                Tone::Bad => ":red_circle:",
            };
            // Slack's control characters: `<!channel>` in a reason must
            // not ping anyone.
            let escaped = notice
                .summary
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            let text = format!("{icon} *bluegreen* ({node}): {escaped}");
            (
                serde_json::json!({ "text": text }).to_string(),
                "application/json",
            )
        }
        Format::Teams => (teams(notice, node).to_string(), "application/json"),
    }
}

/// How a notice reads at a glance.
enum Tone {
    Good,
    Info,
    Bad,
}

fn tone(kind: &str) -> Tone {
    match kind {
        "deploy_succeeded" | "switched" | "certificate_renewed" | "maintenance_off" => Tone::Good,
        "deploy_started" | "maintenance_on" | "test" => Tone::Info,
        _ => Tone::Bad,
    }
}

/// A Teams message: an Adaptive Card with the sentence and the facts that
/// are plain values (version, side, actor, reason, ...).
fn teams(notice: &Notice, node: &str) -> serde_json::Value {
    let color = match tone(&notice.kind) {
        Tone::Good => "Good",
        Tone::Info => "Accent",
        Tone::Bad => "Attention",
    };
    let facts: Vec<serde_json::Value> = notice
        .data
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| {
                    let value = match v {
                        serde_json::Value::String(s) if !s.is_empty() => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some(serde_json::json!({ "title": k, "value": value }))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut body = vec![
        serde_json::json!({ "type": "TextBlock", "text": format!("bluegreen ({node})"), "weight": "Bolder", "size": "Medium" }),
        serde_json::json!({ "type": "TextBlock", "text": notice.summary, "wrap": true, "color": color }),
    ];
    if !facts.is_empty() {
        body.push(serde_json::json!({ "type": "FactSet", "facts": facts }));
    }
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

/// `sha256=HEX(HMAC-SHA256(secret, "TIMESTAMP.BODY"))`: the timestamp is
/// signed with the body, so a captured delivery cannot be replayed later.
pub fn signature(secret: &[u8], timestamp: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The receiver's answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The first 500 bytes of the body, as text.
    pub body: String,
}

/// Posts `notice` to `hook` once.
pub async fn attempt(
    client: &HookClient,
    hook: &Hook,
    notice: &Notice,
    node: &str,
) -> Result<Answer, String> {
    let (body, content_type) = body(hook, notice, node);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut req = http::Request::post(hook.url.as_str())
        .header("content-type", content_type)
        .header(
            "user-agent",
            concat!("bluegreen/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-bluegreen-event", notice.kind.as_str())
        .header("x-bluegreen-delivery", notice.id.as_str())
        .header("x-bluegreen-timestamp", now.to_string());
    if let Some(var) = &hook.secret_env {
        let secret = std::env::var(var).map_err(|_| {
            format!(
                "notify.{}: the variable {var} (secret_env) is not set, so nothing was sent",
                hook.name
            )
        })?;
        req = req.header(
            "x-bluegreen-signature",
            signature(secret.as_bytes(), now, &body),
        );
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{}: {e}", hook.url))?;
    let work = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        // At most 64 KiB of an answer is read.
        let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
        Ok(Answer { status, body: text })
    };
    tokio::time::timeout(hook.timeout, work)
        .await
        .map_err(|_| {
            format!(
                "no answer within {} (notify.timeout)",
                humantime::format_duration(hook.timeout)
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(format: Format) -> Hook {
        Hook {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![],
            format,
            secret_env: None,
            retry_for: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
        }
    }

    fn notice() -> Notice {
        Notice {
            id: "node1-1700000000000-7".into(),
            kind: "deploy_rolled_back".into(),
            at_unix_ms: 1_700_000_000_000,
            subject: Some("deploy #7".into()),
            summary: "deploy #7 of v2 to green was ROLLED BACK: error rate".into(),
            data: serde_json::json!({"deploy_id": 7}),
        }
    }

    #[test]
    fn cloudevents_are_structured_mode_with_a_stable_id() {
        let (body, ct) = body(&hook(Format::CloudEvents), &notice(), "node1");
        assert_eq!(ct, "application/cloudevents+json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "node1-1700000000000-7");
        assert_eq!(v["source"], "bluegreen/node1");
        assert_eq!(v["type"], "dev.bluegreen.deploy_rolled_back");
        assert_eq!(v["subject"], "deploy #7");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["data"]["facts"]["deploy_id"], 7);
    }

    #[test]
    fn slack_gets_one_line() {
        let (body, ct) = body(&hook(Format::Slack), &notice(), "node1");
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["text"],
            ":red_circle: *bluegreen* (node1): deploy #7 of v2 to green was ROLLED BACK: error rate"
        );
    }

    #[test]
    fn teams_gets_an_adaptive_card_with_the_plain_facts() {
        let mut n = notice();
        n.data = serde_json::json!({"deploy_id": 7, "version": "v2", "reason": null, "failed_step": {"step": "bake"}});
        let (body, ct) = body(&hook(Format::Teams), &n, "node1");
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "message");
        let card = &v["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let items = card["content"]["body"].as_array().unwrap();
        assert_eq!(items[1]["text"], n.summary);
        assert_eq!(items[1]["color"], "Attention");
        let facts = items[2]["facts"].as_array().unwrap();
        assert_eq!(
            facts,
            &vec![
                serde_json::json!({"title": "deploy_id", "value": "7"}),
                serde_json::json!({"title": "version", "value": "v2"}),
            ]
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // openssl: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, "{\"a\":1}"),
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
