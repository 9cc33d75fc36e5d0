//! docs/architecture.md's module table names every source file, and only
//! files that exist: the map cannot drift from the tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut BTreeSet<String>, root: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out, root);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel);
        }
    }
}

#[test]
fn the_module_table_names_every_source_file_and_no_other() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let crates = root.join("crates");
    let mut files = BTreeSet::new();
    for krate in std::fs::read_dir(&crates).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            sources(&src, &mut files, &crates);
        }
    }
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let listed: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|f| f.ends_with(".rs"))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = files.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "not in docs/architecture.md's module table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in the module table but not in the tree: {stale:?}"
    );
}

/// The modules of the binary a file names through `crate::`: `crate::x`,
/// `crate::x::y` and each name of `use crate::{x, y::z}`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            for item in list[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The binary's modules (a file, or a folder: `server/`, `client/`) import
/// one another without a cycle: what the server and the client share
/// (`args`, `exit`, `certs`) sits below both, so the parser (`cli`) and the
/// demo are at the top and nothing imports them back.
#[test]
fn the_binarys_modules_import_one_another_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeSet::new();
    sources(&src, &mut files, &src);
    let module = |file: &str| -> String {
        file.split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string()
    };
    let mut edges: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for file in &files {
        let from = module(file);
        if from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let to: BTreeSet<String> = named_modules(&text)
            .into_iter()
            .filter(|m| *m != from && files.iter().any(|f| module(f) == *m))
            .collect();
        edges.entry(from).or_default().extend(to);
    }
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        m: &str,
        edges: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("an import cycle in the binary: {}", cycle.join(" -> "));
        }
    }
    assert!(
        edges["cli"].contains("client") && edges["client"].contains("args"),
        "the edges are read: {edges:?}"
    );
    // The server and the client share only what sits below both.
    for (a, b) in [("server", "client"), ("client", "server")] {
        assert!(
            !edges[a].contains(b),
            "{a} imports {b}: move what they share below both: {edges:?}"
        );
    }
}

/// The router's layers, bottom to top, by module path (the longest prefix
/// names a module's layer). A module may import its own layer and those
/// below, never one above: the request path, the taps, the health checks
/// and the listeners take the `Plane`, and only the control (`Router`)
/// plans, persists and swaps the snapshot. Where a folder spans two layers
/// the code says why: a shadow run's types are a field of the snapshot but
/// its comparing sends requests (`taps::shadow::compare`); an upstream's
/// pool is in the snapshot but its health loop reads the plane
/// (`upstream::health`); the certificates and the ACME challenges are what
/// the plane serves, the TLS edge (`tls`) serves connections.
const ROUTER_LAYERS: &[(&str, &[&str])] = &[
    ("base", &["settings", "stats", "client_body", "crypto"]),
    ("upstream", &["upstream"]),
    ("taps", &["taps"]),
    ("snapshot", &["snapshot"]),
    (
        "plane",
        &[
            "plane",
            "events",
            "tls::failures",
            "tls::certs",
            "tls::challenge",
        ],
    ),
    ("checks", &["upstream::health"]),
    ("request", &["request", "taps::shadow::compare"]),
    ("edge", &["downstream", "listener", "tls", "memory"]),
    (
        "control",
        &["control", "drivers", "notify", "status", "lib"],
    ),
];

/// The router module a source file is (`request/mod.rs` is `request`).
fn module_of(file: &str) -> String {
    let m = file.trim_end_matches(".rs");
    let m = m.strip_suffix("/mod").unwrap_or(m);
    m.replace('/', "::")
}

/// Every module path a file names through `crate::` or `super::` (each name
/// of a `{...}` list too), outside comments and `#[cfg(test)]` modules.
fn named_paths(text: &str, me: &str, is_mod_rs: bool) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let path_chars = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    // `super` of `a::b` (a file) is `a`; of `a::b` (a folder's mod.rs) too,
    // since `a::b`'s own items live in it.
    let parent = {
        let mut parts: Vec<&str> = me.split("::").collect();
        if !is_mod_rs || parts.len() > 1 {
            parts.pop();
        }
        parts.join("::")
    };
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        for (i, _) in code.match_indices(prefix) {
            if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let head = path_chars(rest);
            let join = |tail: &str| match (base.is_empty(), tail.is_empty()) {
                (true, _) => tail.to_string(),
                (false, true) => base.clone(),
                (false, false) => format!("{base}::{tail}"),
            };
            let after = &rest[head.len()..];
            if let Some(list) = after.strip_prefix("::{").or(after.strip_prefix('{')) {
                let end = list.find('}').unwrap_or(list.len());
                for item in list[..end].split(',') {
                    let item = path_chars(item.trim());
                    if !item.is_empty() && item != "self" {
                        let full = if head.is_empty() {
                            item
                        } else {
                            format!("{head}::{item}")
                        };
                        out.insert(join(&full));
                    }
                }
            }
            out.insert(join(&head));
        }
    }
    out
}

#[test]
fn the_routers_modules_import_only_their_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bluegreen-router/src");
    let mut files = BTreeSet::new();
    sources(&src, &mut files, &src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    // The longest module a path names (`request::body::InFlight` is
    // `request::body`).
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| modules.contains(m))
    };
    let layer = |module: &str| -> usize {
        ROUTER_LAYERS
            .iter()
            .enumerate()
            .flat_map(|(i, (_, prefixes))| prefixes.iter().map(move |p| (i, *p)))
            .filter(|(_, p)| module == *p || module.starts_with(&format!("{p}::")))
            .max_by_key(|(_, p)| p.len())
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("{module} is in no layer of ROUTER_LAYERS"))
    };
    let mut up = Vec::new();
    let mut edges = 0;
    for file in &files {
        let me = module_of(file);
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        for path in named_paths(&text, &me, file.ends_with("mod.rs")) {
            let Some(to) = resolve(&path) else { continue };
            if to == me {
                continue;
            }
            edges += 1;
            let (from_layer, to_layer) = (layer(&me), layer(&to));
            if to_layer > from_layer {
                up.push(format!(
                    "{file} ({}) uses {path} ({})",
                    ROUTER_LAYERS[from_layer].0, ROUTER_LAYERS[to_layer].0
                ));
            }
        }
    }
    assert!(edges > 100, "the imports are read: {edges}");
    assert!(
        up.is_empty(),
        "imports that point up the router's layers (move the type down, or pass what is needed):\n{}",
        up.join("\n")
    );
}
