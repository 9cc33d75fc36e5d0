//! `[[notify]]`: where bluegreen tells people and systems what happened
//! (a switch, a rollback, how a deploy ended, maintenance, certificates).
//! Each entry is one receiver; deliveries go through a durable outbox and
//! are retried until `retry_for` has passed.

use super::Checker;
use serde::Deserialize;
use std::time::Duration;

/// The kinds of notices a hook may ask for (`events`).
pub const KINDS: &[&str] = &[
    "deploy_started",
    "deploy_succeeded",
    "deploy_failed",
    "deploy_rolled_back",
    "deploy_aborted",
    "switched",
    "rolled_back",
    "maintenance_on",
    "maintenance_off",
    "certificate_renewed",
    "certificate_failing",
    "node_lost",
    "migration_applied",
    "migration_failed",
];

/// The body a receiver gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents 1.0, structured mode (`application/cloudevents+json`).
    CloudEvents,
    /// Slack's incoming webhook (`{"text": ...}`), which Mattermost and
    /// Rocket.Chat take too.
    Slack,
    /// A Microsoft Teams message with an Adaptive Card, as a Teams
    /// Workflows ("Post to a channel when a webhook request is received")
    /// URL takes it.
    Teams,
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub name: String,
    pub url: String,
    /// The kinds it gets (all of `KINDS` when the key is absent).
    pub events: Vec<String>,
    pub format: Format,
    /// The variable holding the signing secret.
    pub secret_env: Option<String>,
    /// How long a delivery is retried before it is given up (and counted).
    pub retry_for: Duration,
    /// The limit of one attempt.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawHook {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    format: Option<String>,
    secret_env: Option<String>,
    retry_for: Option<String>,
    timeout: Option<String>,
}

pub(super) fn validate(raw: &[RawHook], c: &mut Checker) -> Vec<Hook> {
    let mut out: Vec<Hook> = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, h) in raw.iter().enumerate() {
        let key = |k: &str| format!("notify[{i}].{k}");
        let name = match h.name.as_deref().map(str::trim) {
            Some(n)
                if !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                if !names.insert(n.to_string()) {
                    c.issue(
                        key("name"),
                        format!("{n:?} is used by another [[notify]] entry"),
                    );
                }
                Some(n.to_string())
            }
            Some(n) => {
                c.issue(
                    key("name"),
                    format!("{n:?}: letters, digits, - and _ (it names the hook in metrics and `notify test`)"),
                );
                None
            }
            None => {
                c.issue(key("name"), "missing: every hook needs a name");
                None
            }
        };
        let url = match h.url.as_deref() {
            Some(u) if valid_url(u) => Some(u.to_string()),
            Some(u) => {
                c.issue(
                    key("url"),
                    format!("{u:?} is not an http:// or https:// URL"),
                );
                None
            }
            None => {
                c.issue(key("url"), "missing: where the notices go");
                None
            }
        };
        let events = match &h.events {
            None => KINDS.iter().map(|k| k.to_string()).collect(),
            Some(list) if list.is_empty() => {
                c.issue(key("events"), "is empty: leave it out for every kind");
                Vec::new()
            }
            Some(list) => {
                for e in list {
                    if !KINDS.contains(&e.as_str()) {
                        c.issue(
                            key("events"),
                            format!("unknown event {e:?}; the kinds are {}", KINDS.join(", ")),
                        );
                    }
                }
                list.clone()
            }
        };
        let format = match h.format.as_deref().unwrap_or("cloudevents") {
            "cloudevents" => Format::CloudEvents,
            "slack" => Format::Slack,
            "teams" => Format::Teams,
            other => {
                c.issue(
                    key("format"),
                    format!("unknown format {other:?}: \"cloudevents\", \"slack\" or \"teams\""),
                );
                Format::CloudEvents
            }
        };
        if let Some(v) = &h.secret_env {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                c.issue(key("secret_env"), format!("{v:?} is not a variable name"));
            }
        }
        let retry_for = c.duration(
            &key("retry_for"),
            h.retry_for.as_deref(),
            Duration::from_secs(24 * 3600),
        );
        let timeout = c.duration(
            &key("timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(10),
        );
        if let (Some(name), Some(url)) = (name, url) {
            out.push(Hook {
                name,
                url,
                events,
                format,
                secret_env: h.secret_env.clone(),
                retry_for,
                timeout,
            });
        }
    }
    out
}

fn valid_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}
