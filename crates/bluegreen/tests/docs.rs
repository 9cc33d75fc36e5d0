//! The reference docs are checked against the code: every metric the
//! admin API exports, every route, every error code it answers with and
//! every exit code of the CLI is named in `docs/reference/`, and every
//! relative link in the README, the CHANGELOG and `docs/` leads to a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each string literal that follows `marker` (after spaces and newlines).
fn literals_after(text: &str, marker: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(marker) {
        let rest = text[i + marker.len()..].trim_start();
        if let Some(rest) = rest.strip_prefix('"') {
            if let Some(end) = rest.find('"') {
                out.insert(rest[..end].to_string());
            }
        }
    }
    out
}

fn missing(names: &BTreeSet<String>, doc: &str, shape: impl Fn(&str) -> String) -> Vec<String> {
    names
        .iter()
        .filter(|n| !doc.contains(&shape(n)))
        .cloned()
        .collect()
}

#[test]
fn every_metric_is_in_the_metrics_reference() {
    let code = read("crates/bluegreen-api/src/metrics.rs");
    // Every string literal that is a metric name (`"bluegreen_..."`).
    let names: BTreeSet<String> = code
        .split('"')
        .filter(|s| {
            s.starts_with("bluegreen_")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(names.len() > 30, "the metrics are read: {names:?}");
    let doc = read("docs/reference/observability.md");
    let gone = missing(&names, &doc, |n| format!("`{n}`"));
    assert!(
        gone.is_empty(),
        "metrics not in docs/reference/observability.md: {gone:?}"
    );
}

#[test]
fn every_route_is_in_the_api_reference() {
    let code = read("crates/bluegreen-api/src/routes/mod.rs");
    let routes = literals_after(&code, ".route(");
    assert!(routes.len() > 25, "the routes are read: {routes:?}");
    let doc = read("docs/reference/api.md");
    let gone = missing(&routes, &doc, |r| {
        if r.starts_with("/livez")
            || r.starts_with("/readyz")
            || r.starts_with("/metrics")
            || r.starts_with("/assets")
            || r == "/"
        {
            format!(" {r}`")
        } else {
            format!("/api/v1{r}`")
        }
    });
    assert!(
        gone.is_empty(),
        "routes not in docs/reference/api.md: {gone:?}"
    );
}

#[test]
fn every_error_code_is_in_the_api_reference() {
    let mut files = Vec::new();
    rust_files(&repo().join("crates/bluegreen-api/src"), &mut files);
    rust_files(
        &repo().join("crates/bluegreen-router/src/control"),
        &mut files,
    );
    let mut codes = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        for marker in ["refused(", "conflict(", "code: "] {
            codes.extend(literals_after(text, marker));
        }
        // `(StatusCode::X, "code")` in the mappings.
        for (i, _) in text.match_indices("(StatusCode::") {
            let rest = &text[i..];
            let end = rest.find(')').unwrap_or(0);
            codes.extend(literals_after(&rest[..end], ","));
        }
    }
    codes.retain(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
    assert!(codes.len() > 25, "the codes are read: {codes:?}");
    for known in [
        "already_paused",
        "no_sessions",
        "persist_failed",
        "store_unreachable",
    ] {
        assert!(codes.contains(known), "{known} is read: {codes:?}");
    }
    let doc = read("docs/reference/api.md");
    let gone = missing(&codes, &doc, |c| format!("`{c}`"));
    assert!(
        gone.is_empty(),
        "error codes not in docs/reference/api.md: {gone:?}"
    );
}

#[test]
fn every_exit_code_is_in_the_cli_reference() {
    let code = read("crates/bluegreen/src/exit.rs");
    let values: BTreeSet<String> = code
        .lines()
        .filter_map(|l| l.strip_prefix("pub const EXIT_"))
        .filter_map(|l| l.split('=').nth(1))
        .map(|v| v.trim().trim_end_matches(';').to_string())
        .collect();
    assert!(values.len() >= 6, "the exit codes are read: {values:?}");
    let doc = read("docs/reference/cli.md");
    let gone = missing(&values, &doc, |v| format!("`{v}`"));
    assert!(
        gone.is_empty(),
        "exit codes not in docs/reference/cli.md: {gone:?}"
    );
}

#[test]
fn every_relative_link_in_the_docs_leads_to_a_file() {
    let mut pages = vec![repo().join("README.md"), repo().join("CHANGELOG.md")];
    fn md(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                md(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    md(&repo().join("docs"), &mut pages);
    let mut broken = Vec::new();
    let mut links = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            links += 1;
            if !page.parent().unwrap().join(file).exists() {
                broken.push(format!(
                    "{}: {target}",
                    page.strip_prefix(repo()).unwrap_or(page).display()
                ));
            }
        }
    }
    assert!(links > 40, "the links are read: {links}");
    assert!(broken.is_empty(), "links to nothing: {broken:?}");
}
