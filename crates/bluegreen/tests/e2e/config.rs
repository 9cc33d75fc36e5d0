//! Bad configs are rejected with file, key and reason; nothing starts.

use crate::support::*;
use std::process::Command;

fn run(args: &[&str], config_text: &str) -> (i32, String, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("bluegreen.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("BG_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

fn good() -> String {
    RouterBuilder::addrs(vec![closed_port()], vec![closed_port()])
        .config_text(std::path::Path::new("state"))
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bluegreen.toml");
    let out = Command::new(bin())
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn bad_configs_are_rejected_with_file_key_and_reason() {
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown key",
            good().replace("[switch]", "[switch]\ndrain_timout = \"1s\""),
            "drain_timout",
        ),
        (
            "bad address",
            good().replace(
                "listen = \"127.0.0.1:0\"\npreview",
                "listen = \"127.0.0.1:99999\"\npreview",
            ),
            "proxy.listen: invalid address",
        ),
        (
            "missing side",
            good().replace("[environments.green]", "[environments.purple]"),
            "environments.green: missing",
        ),
        (
            "zero upstreams",
            {
                let g = good();
                let start = g.find("[environments.green]\nupstreams = [").unwrap()
                    + "[environments.green]\nupstreams = [".len();
                let end = start + g[start..].find(']').unwrap();
                format!("{}{}", &g[..start], &g[end..])
            },
            "environments.green.upstreams: must list at least one upstream",
        ),
        (
            "remote admin without TLS",
            good()
                .replace(
                    "token_env = \"BG_TEST_TOKEN\"",
                    "token_env = \"BG_TEST_TOKEN\"\nallow_remote = true",
                )
                .replacen(
                    "listen = \"127.0.0.1:0\"\ntoken_env",
                    "listen = \"0.0.0.0:0\"\ntoken_env",
                    1,
                ),
            "admin.tls: the admin API listens on 0.0.0.0:0, beyond this host, without TLS",
        ),
        (
            "bad duration",
            good().replace("drain_timeout = \"5s\"", "drain_timeout = \"five seconds\""),
            "switch.drain_timeout: invalid duration",
        ),
    ];
    for (what, text, needle) in cases {
        let (code, _, err, _) = run(&["check"], text);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(
            err.contains("bluegreen.toml"),
            "{what}: names the file: {err}"
        );
        assert!(
            err.contains(needle),
            "{what}: expected {needle:?} in: {err}"
        );

        let (code, out, err, dir) = run(&["serve"], text);
        assert_eq!(code, 2, "{what}: serve must refuse: {err}");
        assert!(out.is_empty(), "{what}: nothing started");
        assert!(!dir.join("state").exists(), "{what}: no state written");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn serve_refuses_to_start_without_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bluegreen.toml");
    std::fs::write(&path, good()).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("BG_TEST_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BG_TEST_TOKEN") && err.contains("admin.token_env"),
        "{err}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F"), "{bash}");
    for sub in ["upgrade", "reload", "deploy", "rollback"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(run(&["completions", "zsh"]).contains("#compdef bluegreen"));
    let man = run(&["man"]);
    assert!(man.contains(".TH bluegreen"), "{man}");
    assert!(man.contains("reload"), "the man page lists the commands");
}
