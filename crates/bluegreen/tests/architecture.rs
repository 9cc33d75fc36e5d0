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

/// The binary's modules (a file, or a folder such as `commands/`) import
/// one another without a cycle: what the server and the commands share
/// (`args`, `exit`, `certs`, `running`) sits below both, so the parser
/// (`cli`) is at the top and nothing imports it back.
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
        edges["cli"].contains("commands") && edges["commands"].contains("args"),
        "the edges are read: {edges:?}"
    );
}
