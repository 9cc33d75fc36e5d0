//! The migrations corpus (`tests/corpus/`): one file per squawk rule we
//! apply and per rule of ours, safe and unsafe, plus PostgreSQL syntax that
//! must parse, each opening with its expected verdict (`-- expect: ok`,
//! `refused`, `broken`, or the rules it breaks). Our check runs on every
//! file; where the `squawk` command (PyPI `squawk-cli`, the same squawk)
//! is installed, it runs too, as bluegreen would run the file, and the test
//! fails when squawk flags a lock or compatibility rule that we pass.

use bluegreen_core::migration::rules::{self, Class};
use bluegreen_core::migration::{check_file, scan, shape, Flavor, Phase, Problem};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// `ok`, `refused`, `broken`, or the sorted rule names.
fn verdict(problems: &[Problem]) -> String {
    if problems.iter().any(|p| matches!(p, Problem::Broken(_))) {
        return "broken".into();
    }
    if problems.iter().any(|p| matches!(p, Problem::Refused(_))) {
        return "refused".into();
    }
    let found: BTreeSet<&str> = problems
        .iter()
        .filter_map(|p| match p {
            Problem::Finding(f) => Some(f.rule.as_str()),
            _ => None,
        })
        .collect();
    if found.is_empty() {
        "ok".into()
    } else {
        found.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// The squawk command, if installed: `$SQUAWK`, `squawk` on the PATH, or
/// where `pip install --user` puts it.
fn squawk() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("SQUAWK")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push("squawk".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".local/bin/squawk"));
    }
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The rules squawk's own command flags in `path`, run as bluegreen runs
/// the file (in a transaction unless it holds CONCURRENTLY), with the
/// opt-in rules we turn on.
fn squawk_rules(bin: &Path, path: &Path, in_tx: bool) -> BTreeSet<String> {
    let include: Vec<String> = rules::enabled().iter().map(|r| r.to_string()).collect();
    let mut cmd = Command::new(bin);
    cmd.args(["--reporter", "json", "--pg-version", "15"])
        .arg(format!("--include={}", include.join(",")))
        .arg(path);
    if in_tx {
        cmd.arg("--assume-in-transaction");
    }
    let out = cmd.output().expect("running squawk");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "squawk on {}: {e}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["rule_name"].as_str().map(String::from))
        .collect()
}

#[test]
fn every_corpus_file_gets_its_verdict_and_squawk_flags_nothing_we_pass() {
    let files = scan(&corpus()).expect("corpus file names");
    assert!(files.len() >= 60, "{} files", files.len());
    let squawk = squawk();
    if squawk.is_none() {
        println!("squawk not installed (pip install --user squawk-cli==2.68.0): the oracle part is skipped, the corpus part runs");
    }
    let mut wrong = Vec::new();
    let mut table = vec![format!("{:<44} {:<44} {}", "file", "ours", "squawk")];
    for f in &files {
        let sql = std::fs::read_to_string(&f.path).unwrap();
        let expect = sql
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("-- expect: "))
            .unwrap_or_else(|| panic!("{}: no `-- expect:` line", f.path.display()))
            .trim()
            .to_string();
        let problems = check_file(f, &sql, Flavor::Postgres);
        let ours = verdict(&problems);
        let name = f.file_name();
        if ours != expect {
            let detail: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            wrong.push(format!(
                "{name}: expected {expect}, got {ours}\n{}",
                detail.join("\n")
            ));
        }
        let mut theirs = String::from("-");
        if let Some(bin) = &squawk {
            let in_tx = shape(&f.path, &sql, Flavor::Postgres)
                .map_or(true, |s| s.outside_transaction.is_none());
            let flagged = squawk_rules(bin, &f.path, in_tx);
            theirs = if flagged.is_empty() {
                "ok".into()
            } else {
                flagged.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            // A rule that holds for this file (lock rules everywhere,
            // compatibility rules in expand files) must be ours too.
            for rule in &flagged {
                let Ok(r) = rule.parse::<squawk_linter::Rule>() else {
                    continue;
                };
                let holds = match rules::class(r) {
                    Class::Lock => true,
                    Class::Compat => f.phase == Phase::Expand,
                    Class::Off(_) => false,
                };
                if holds
                    && ours != "refused"
                    && ours != "broken"
                    && !ours.split(", ").any(|x| x == rule)
                {
                    wrong.push(format!(
                        "{name}: squawk flags {rule}, we pass it (ours: {ours})"
                    ));
                }
            }
        }
        table.push(format!("{name:<44} {ours:<44} {theirs}"));
    }
    println!("{}", table.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
