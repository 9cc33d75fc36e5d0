//! Response comparison for shadowing: what differs between the live side's
//! answer and the idle side's, structurally for JSON, with noise learned from
//! pairs of live answers (fields that differ between two live upstreams, such
//! as timestamps and random ids, are not real differences). Pure functions;
//! the shadowing machinery feeds them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Headers that differ between any two answers and are ignored by default.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "content-length",
    "etag",
    "last-modified",
    "set-cookie",
    "age",
    "x-served-by",
];

/// The endpoint a request belongs to: method and path with ids collapsed, so
/// `/users/42` and `/users/7` aggregate as `GET /users/{id}`.
pub fn endpoint(method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if looks_like_id(s) { "{id}" } else { s })
        .collect();
    format!("{method} {}", segments.join("/"))
}

fn looks_like_id(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let digits = s.bytes().all(|b| b.is_ascii_digit());
    let hex = s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let uuid = s.len() == 36 && s.bytes().filter(|&b| b == b'-').count() == 4 && hex;
    digits || hex || uuid
}

/// One differing field: a JSON pointer (or `status`, `header:NAME`, `body`)
/// and both values, shortened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub live: String,
    pub idle: String,
}

/// Values longer than this are cut in reports.
const SHOW: usize = 120;

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > SHOW {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .nth(SHOW)
                .map(|(i, _)| i)
                .unwrap_or(s.len())]
        )
    } else {
        s
    }
}

/// Structural differences between two JSON values, as JSON pointers. Arrays
/// are compared index by index; a missing key or index is a difference.
pub fn diff_json(live: &Value, idle: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk(live, idle, &mut String::new(), &mut out);
    out
}

fn walk(a: &Value, b: &Value, path: &mut String, out: &mut Vec<FieldDiff>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                pair(x.get(k), y.get(k), path, out);
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                pair(x.get(i), y.get(i), path, out);
                path.truncate(len);
            }
        }
        _ if a != b => out.push(FieldDiff {
            field: if path.is_empty() {
                "/".into()
            } else {
                path.clone()
            },
            live: show(a),
            idle: show(b),
        }),
        _ => {}
    }
}

/// Compares a member present on either side; one side missing is a difference.
fn pair(a: Option<&Value>, b: Option<&Value>, path: &mut String, out: &mut Vec<FieldDiff>) {
    match (a, b) {
        (Some(va), Some(vb)) => walk(va, vb, path, out),
        (va, vb) => out.push(FieldDiff {
            field: path.clone(),
            live: va.map(show).unwrap_or_else(|| "(missing)".into()),
            idle: vb.map(show).unwrap_or_else(|| "(missing)".into()),
        }),
    }
}

/// Array indexes in a pointer become `*`, so noise learned on `/items/0/id`
/// also covers `/items/5/id`.
pub fn generalize(pointer: &str) -> String {
    pointer
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Fields learned to be noise, per endpoint: they differed between two
/// answers of the live side to the same request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noise {
    pub fields: BTreeMap<String, BTreeSet<String>>,
}

impl Noise {
    /// Learns from two live answers to one request.
    pub fn learn(&mut self, endpoint: &str, live_a: &Value, live_b: &Value) {
        let diffs = diff_json(live_a, live_b);
        if diffs.is_empty() {
            return;
        }
        let set = self.fields.entry(endpoint.to_string()).or_default();
        for d in diffs {
            set.insert(generalize(&d.field));
        }
    }

    /// True when a differing field is known noise for the endpoint.
    pub fn is_noise(&self, endpoint: &str, pointer: &str) -> bool {
        self.fields
            .get(endpoint)
            .is_some_and(|s| s.contains(&generalize(pointer)))
    }
}

/// One answer, as far as comparison cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<'a> {
    pub status: u16,
    /// Lower-case names.
    pub headers: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a comparison ignores.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    pub headers: BTreeSet<String>,
    /// JSON pointers (array indexes may be written as `*`).
    pub paths: BTreeSet<String>,
}

/// Real differences between a live and an idle answer to one request.
pub fn compare(
    endpoint: &str,
    live: &Answer,
    idle: &Answer,
    ignore: &Ignore,
    noise: &Noise,
) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if live.status != idle.status {
        out.push(FieldDiff {
            field: "status".into(),
            live: live.status.to_string(),
            idle: idle.status.to_string(),
        });
    }
    let ignored =
        |name: &str| DEFAULT_IGNORED_HEADERS.contains(&name) || ignore.headers.contains(name);
    let names: BTreeSet<&str> = live
        .headers
        .iter()
        .chain(idle.headers.iter())
        .map(|(k, _)| k.as_str())
        .filter(|k| !ignored(k))
        .collect();
    for name in names {
        let get = |a: &Answer| {
            a.headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (l, i) = (get(live), get(idle));
        if l != i {
            out.push(FieldDiff {
                field: format!("header:{name}"),
                live: l,
                idle: i,
            });
        }
    }
    let json = |a: &Answer| {
        a.content_type
            .is_some_and(|c| c.contains("json"))
            .then(|| serde_json::from_slice::<Value>(a.body).ok())
            .flatten()
    };
    match (json(live), json(idle)) {
        (Some(a), Some(b)) => {
            for d in diff_json(&a, &b) {
                let general = generalize(&d.field);
                if !ignore.paths.contains(&general)
                    && !ignore.paths.contains(&d.field)
                    && !noise.is_noise(endpoint, &d.field)
                {
                    out.push(d);
                }
            }
        }
        _ if live.body != idle.body => out.push(match text_diff(live.body, idle.body) {
            // Text: the lines where the two first part, as a short diff.
            Some((l, i)) => FieldDiff {
                field: "body".into(),
                live: l,
                idle: i,
            },
            None => FieldDiff {
                field: "body".into(),
                live: format!("{} bytes", live.body.len()),
                idle: format!("{} bytes", idle.body.len()),
            },
        }),
        _ => {}
    }
    // Status, header and byte-body differences can be noise too.
    out.retain(|d| !noise.is_noise(endpoint, &d.field));
    out
}

/// Lines of context and of change shown for a text body.
const DIFF_LINES: usize = 3;
/// Longest line shown in a text diff.
const DIFF_WIDTH: usize = 120;

/// Two text bodies where they first differ, as the lines of a unified diff
/// (`@@ line N @@`, a line of context, `-` the live side's lines, `+` the
/// idle side's): short enough for a report. `None` when either is not
/// UTF-8 text.
pub fn text_diff(live: &[u8], idle: &[u8]) -> Option<(String, String)> {
    let (a, b) = (
        std::str::from_utf8(live).ok()?,
        std::str::from_utf8(idle).ok()?,
    );
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Bodies that differ only in line endings or a last newline have no
    // line to show: their sizes say more.
    if a == b {
        return None;
    }
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    // The common tail, so the hunk holds only what changed.
    let tail = a[first..]
        .iter()
        .rev()
        .zip(b[first..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let cut = |l: &str| -> String {
        match l.char_indices().nth(DIFF_WIDTH) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        }
    };
    let hunk = |lines: &[&str], sign: char| -> String {
        let mut out = format!("@@ line {} @@\n", first + 1);
        if first > 0 {
            out.push_str(&format!(" {}\n", cut(lines[first - 1])));
        }
        let changed = &lines[first..lines.len() - tail];
        for l in changed.iter().take(DIFF_LINES) {
            out.push_str(&format!("{sign}{}\n", cut(l)));
        }
        if changed.len() > DIFF_LINES {
            out.push_str(&format!(
                "{sign}… {} more line(s)\n",
                changed.len() - DIFF_LINES
            ));
        }
        out.trim_end().to_string()
    };
    Some((hunk(&a, '-'), hunk(&b, '+')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_bodies_differ_as_a_short_unified_diff() {
        let live = b"<html>\n<h1>Shop</h1>\n<p>price 10</p>\n<footer/>\n";
        let idle = b"<html>\n<h1>Shop</h1>\n<p>price 12</p>\n<footer/>\n";
        let (l, i) = text_diff(live, idle).unwrap();
        assert_eq!(l, "@@ line 3 @@\n <h1>Shop</h1>\n-<p>price 10</p>");
        assert_eq!(i, "@@ line 3 @@\n <h1>Shop</h1>\n+<p>price 12</p>");
        // Many changed lines: a few shown, the rest counted.
        let long: String = (0..10).map(|n| format!("line {n}\n")).collect();
        let (l, _) = text_diff(long.as_bytes(), b"other\n").unwrap();
        assert!(l.ends_with("-… 7 more line(s)"), "{l}");
        assert!(text_diff(&[0xff, 0xfe], b"x").is_none());
    }

    #[test]
    fn endpoints_collapse_ids() {
        assert_eq!(
            endpoint("GET", "/users/42/orders?page=2"),
            "GET /users/{id}/orders"
        );
        assert_eq!(
            endpoint("GET", "/o/3f2b8c1e-9a7d-4c2b-8e1f-0a9b8c7d6e5f"),
            "GET /o/{id}"
        );
        assert_eq!(endpoint("GET", "/static/app.js"), "GET /static/app.js");
    }

    #[test]
    fn json_is_compared_structurally() {
        let a = json!({"id": 1, "name": "x", "tags": ["a", "b"], "gone": true});
        let b = json!({"name": "x", "id": 1, "tags": ["a", "c"], "new": 1});
        let d: Vec<String> = diff_json(&a, &b).into_iter().map(|d| d.field).collect();
        assert_eq!(d, vec!["/gone", "/new", "/tags/1"]);
        assert!(diff_json(&json!({"a": [1, 2]}), &json!({"a": [1, 2]})).is_empty());
    }

    #[test]
    fn noise_learned_from_two_live_answers_is_not_a_difference() {
        let mut noise = Noise::default();
        let ep = endpoint("GET", "/items");
        noise.learn(
            &ep,
            &json!({"items": [{"id": "r1", "ts": 1}]}),
            &json!({"items": [{"id": "r2", "ts": 2}]}),
        );
        assert!(noise.is_noise(&ep, "/items/7/ts"));
        let headers: Vec<(String, String)> = vec![("date".into(), "now".into())];
        let live_body = br#"{"items":[{"id":"r3","ts":3,"price":10}]}"#;
        let idle_body = br#"{"items":[{"id":"r4","ts":4,"price":12}]}"#;
        let live = Answer {
            status: 200,
            headers: &headers,
            content_type: Some("application/json"),
            body: live_body,
        };
        let idle = Answer {
            status: 200,
            headers: &[],
            content_type: Some("application/json"),
            body: idle_body,
        };
        let diffs = compare(&ep, &live, &idle, &Ignore::default(), &noise);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].field, "/items/0/price");
        assert_eq!(
            (diffs[0].live.as_str(), diffs[0].idle.as_str()),
            ("10", "12")
        );
    }

    #[test]
    fn status_headers_and_bytes_are_compared() {
        let h1: Vec<(String, String)> = vec![
            ("x-feature".into(), "on".into()),
            ("server".into(), "a".into()),
        ];
        let h2: Vec<(String, String)> = vec![
            ("x-feature".into(), "off".into()),
            ("server".into(), "b".into()),
        ];
        let live = Answer {
            status: 200,
            headers: &h1,
            content_type: Some("text/plain"),
            body: b"hello",
        };
        let idle = Answer {
            status: 500,
            headers: &h2,
            content_type: Some("text/plain"),
            body: b"oops!!",
        };
        let fields: Vec<String> =
            compare("GET /", &live, &idle, &Ignore::default(), &Noise::default())
                .into_iter()
                .map(|d| d.field)
                .collect();
        assert_eq!(fields, vec!["status", "header:x-feature", "body"]);
        let ignore = Ignore {
            headers: ["x-feature".to_string()].into(),
            paths: BTreeSet::new(),
        };
        assert_eq!(
            compare("GET /", &live, &idle, &ignore, &Noise::default()).len(),
            2
        );
    }
}
