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

/// Runs `bluegreen ARGS` with stdout a pipe of one page (4 KiB, so the
/// output cannot all fit before the reader goes) that is closed after its
/// first bytes, as `| head -c 16` does: (exit code, stderr).
fn with_stdout_closed_early(args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    // Close-on-exec: the child must not hold the read end itself.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let mut child = Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(reader);
    let mut first = [0u8; 16];
    reader.read_exact(&mut first).unwrap();
    drop(reader);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((child.wait().unwrap().code(), err));
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{args:?} did not end once its reader went away")
        })
}

#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly() {
    for args in [&["completions", "bash"][..], &["man"]] {
        // More than the pipe holds, or nothing would meet the closed end.
        let whole = Command::new(bin()).args(args).output().unwrap().stdout;
        assert!(whole.len() > 4096, "{args:?}: {} bytes", whole.len());
        let (code, err) = with_stdout_closed_early(args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(code, Some(101), "{args:?}: {err}");
        assert_eq!((code, err.as_str()), (Some(0), ""), "{args:?}");
    }
}

#[test]
fn the_man_pages_it_refers_to_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        pages += 1;
        // Every `bluegreen\-deploy(1)` a page names is a page here.
        for name in text
            .split(|c: char| c.is_whitespace() || c == '(')
            .filter(|w| w.starts_with("bluegreen\\-"))
        {
            if !text.contains(&format!("{name}(1)")) {
                continue;
            }
            let file = dir.path().join(format!("{}.1", name.replace("\\-", "-")));
            assert!(
                file.exists(),
                "{} refers to {name}(1), not generated",
                path.display()
            );
        }
    }
    assert!(pages > 20, "{pages} pages");
    assert!(dir.path().join("bluegreen-deploy.1").exists());
}
