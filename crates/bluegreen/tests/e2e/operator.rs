//! The operator's CLI: following a release live through the event stream
//! (`status --watch`, `deploy --follow`, `--timeout`), and messages that
//! say what to do.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A router whose deploys go through a hook that only logs.
fn router(blue: &Backend, green: &Backend) -> RouterProc {
    RouterBuilder::new(&[blue], &[green])
        .extra(
            "[deploy]\ndeploy_timeout = \"5s\"\nkeep_warm = \"1m\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"300ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n",
        )
        .start()
}

/// Runs the CLI to its end in a blocking thread.
async fn cli(r: &RouterProc, args: &[&str], token: &str) -> (i32, String, String) {
    r.cli_with_token(args, token).await
}

/// A CLI process whose stdout is read line by line as it comes.
struct Lines {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(r: &RouterProc, args: &[&str]) -> Lines {
        use std::io::BufRead;
        let mut child = Command::new(bin())
            .args(args)
            .env("BLUEGREEN_ADMIN", r.admin_url())
            .env("BLUEGREEN_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, rx }
    }

    /// The next line within `limit`, or `None` (the process ended or was silent).
    fn next(&mut self, limit: Duration) -> Option<String> {
        self.rx.recv_timeout(limit).ok()
    }

    /// The rest of the output and the exit code, waiting up to `limit`.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + limit;
        let mut rest = Vec::new();
        while let Ok(line) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            rest.push(line);
        }
        let status = self.child.wait().unwrap();
        (status.code(), rest.join("\n"))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_deploy_is_followed_again_and_a_timeout_says_how_to_come_back() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let r = router(&blue, &green);
    r.wait_all_healthy().await;
    // Waiting at the manual gate: following it with a timeout gives up,
    // says the deploy goes on, and how to follow it again.
    let (code, out, err) = cli(&r, &["deploy", "v2", "--manual-promote", "--detach"], TOKEN).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deploy #1 of v2 to green started"), "{out}");
    let (code, out, err) = cli(&r, &["deploy", "--follow", "--timeout", "700ms"], TOKEN).await;
    assert_eq!(code, 6, "{out}{err}");
    assert!(
        err.contains("deploy #1 goes on") && err.contains("bluegreen deploy --follow 1"),
        "{err}"
    );
    // status says what the deploy waits for.
    let (_, text, _) = cli(&r, &["status"], TOKEN).await;
    assert!(
        text.contains("waiting at the manual gate: `bluegreen promote`"),
        "{text}"
    );
    // Re-attached by id while promoted from elsewhere: it follows to the
    // end. Promoted only once it printed its first line (it is connected).
    let mut follower = Lines::spawn(
        &r,
        &["deploy", "--follow", "1", "--json", "--timeout", "30s"],
    );
    let first = follower
        .next(Duration::from_secs(10))
        .expect("the follower's first line");
    assert!(first.contains("\"event\""), "{first}");
    let (st, v) = r.api("POST", "/api/v1/promote", None, Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    let (code, rest) = follower.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{first}\n{rest}");
    let stdout = format!("{first}\n{rest}");
    // JSON lines, a step change each, the end last; the bake went by live.
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    let end = records.last().unwrap();
    assert_eq!(
        (&end["event"], &end["outcome"]),
        (&"end".into(), &"succeeded".into()),
        "{stdout}"
    );
    assert!(
        records
            .iter()
            .any(|e| e["event"] == "step" && e["step"] == "bake" && e["state"] == "running"),
        "the bake was seen while it ran: {stdout}"
    );
    // A deploy that does not exist is named.
    let (code, _, err) = cli(&r, &["deploy", "--follow", "99"], TOKEN).await;
    assert_eq!(code, 1);
    assert!(err.contains("99"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_watch_follows_the_event_stream() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let r = router(&blue, &green);
    r.wait_all_healthy().await;
    // Read as it comes: the first status, then the switch and the status
    // after it; then it is stopped (no timeout to wait out).
    let mut watcher = Lines::spawn(&r, &["status", "--watch", "--json"]);
    let first = watcher
        .next(Duration::from_secs(10))
        .expect("the first status");
    r.switch_to("green").await;
    let mut lines = vec![first];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let line = watcher
            .next(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|| panic!("no status after the switch: {lines:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON lines");
        let done = v["event"] == "status" && v["data"]["live"] == "green";
        lines.push(line);
        if done {
            break;
        }
    }
    watcher.kill();
    let stdout = lines.join("\n");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"status"), "{stdout}");
    let switch = events
        .iter()
        .find(|e| e["event"] == "switch")
        .expect("the switch");
    assert_eq!(switch["data"]["to"], "green");
    // A fresh status follows the switch, with green live.
    let after = events
        .iter()
        .skip_while(|e| e["event"] != "switch")
        .find(|e| e["event"] == "status")
        .expect("a status after the switch");
    assert_eq!(after["data"]["live"], "green", "{after}");
    assert!(!names.contains(&"tick"), "ticks are left out");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_say_what_to_do() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let r = router(&blue, &green);
    r.wait_all_healthy().await;
    // A wrong token: where it comes from, on both ends.
    let (code, _, err) = cli(&r, &["status"], "wrong").await;
    assert_eq!(code, 1);
    assert!(
        err.contains("BLUEGREEN_TOKEN") && err.contains("admin.token_env"),
        "{err}"
    );
    // An unhealthy target: the flag to override.
    green.set_healthy(false);
    wait_until(Duration::from_secs(5), "green down", || async {
        r.status().await["sides"]["green"]["healthy"] == 0
    })
    .await;
    let (code, _, err) = cli(&r, &["switch", "--to", "green"], TOKEN).await;
    assert_eq!(code, 1);
    assert!(err.contains("pass --force"), "{err}");
    // Flags that make no sense together are refused before anything runs.
    for args in [
        &["deploy", "--follow", "3", "v2"][..],
        &["deploy", "--follow", "--detach"][..],
        &["deploy", "v2", "--detach", "--timeout", "5s"][..],
        &["deploy"][..],
    ] {
        let (code, _, err) = cli(&r, args, TOKEN).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    // The demo on a busy port names the flag.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args(["demo", "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_intended_shadow_difference_is_accepted_during_the_deploy() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let r = RouterBuilder::new(&[&blue], &[&green])
        .extra(
            "[deploy]\ndeploy_timeout = \"5s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"300ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n\
             [deploy.shadow]\nduration = \"4s\"\nrequests = 100000\nmin_requests = 5\nmax_diff_rate = 0.05\n\
             [shadow]\nignore_paths = [\"/request_id\", \"/ts\"]\n",
        )
        .start();
    r.wait_all_healthy().await;
    let url = r.url("");
    let load = Traffic::start(move |i| format!("{url}/shadow/users/{}", i % 20));
    r.start_deploy("{\"version\":\"v2\"}").await;
    wait_until(
        Duration::from_secs(10),
        "the shadow step counts the new price",
        || async {
            let (_, v) = r.api("GET", "/api/v1/shadow", None, Some(TOKEN)).await;
            v["shadow"]["running"] == true && v["shadow"]["differing"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    // The new price is intended: accepted while the step runs.
    let (code, out, err) = cli(
        &r,
        &["shadow", "accept", "/price", "--reason", "new pricing"],
        TOKEN,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("accepted /price") && out.contains("ignore_paths"),
        "{out}"
    );
    let d = r.wait_deploy_end(Duration::from_secs(20)).await;
    load.stop().await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    let shadow = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "shadow")
        .unwrap()
        .clone();
    assert!(
        shadow["detail"]
            .as_str()
            .unwrap()
            .contains("accepted as intended: /price"),
        "{shadow}"
    );
    assert!(
        d["log"]
            .to_string()
            .contains("accepted /price as an intended difference (new pricing)"),
        "{d}"
    );
    // A field that is not one is refused with the forms it may take.
    let (code, _, err) = cli(&r, &["shadow", "accept", "price"], TOKEN).await;
    assert_eq!(code, 2, "a bad_request is a usage error: {err}");
    assert!(err.contains("JSON pointer"), "{err}");
}

#[test]
fn migrate_lint_names_what_an_expand_file_must_not_do() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    std::fs::write(
        m.join("0001_items.expand.sql"),
        "CREATE TABLE items (id bigint PRIMARY KEY, price int);\n",
    )
    .unwrap();
    std::fs::write(
        m.join("0002_currency.expand.sql"),
        "ALTER TABLE items ADD COLUMN currency text DEFAULT 'EUR';\n\n\
         ALTER TABLE items DROP COLUMN price;\n",
    )
    .unwrap();
    std::fs::write(
        m.join("0002_currency.contract.sql"),
        "ALTER TABLE items DROP COLUMN price;\n",
    )
    .unwrap();
    let run = |dir: &std::path::Path| {
        let out = Command::new(bin())
            .args(["migrate", "lint"])
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The drop in the expand file is named with file, line, rule and the
    // way to do it; the same drop in the contract file is fine.
    let (code, out, _) = run(m);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("0002_currency.expand.sql:3: ALTER TABLE items DROP COLUMN price"),
        "{out}"
    );
    assert!(
        out.contains("drop-column") && out.contains("contract file"),
        "{out}"
    );
    assert!(!out.contains("contract.sql:"), "{out}");
    // Fixed: clean.
    std::fs::write(
        m.join("0002_currency.expand.sql"),
        "ALTER TABLE items ADD COLUMN currency text DEFAULT 'EUR';\n",
    )
    .unwrap();
    let (code, out, _) = run(m);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3 file(s)") && out.contains(": ok"), "{out}");
    // SQL that does not parse, and a name that is not a migration's: exit 2.
    std::fs::write(m.join("0003_bad.expand.sql"), "ALTER TABEL items;\n").unwrap();
    let (code, _, err) = run(m);
    assert_eq!(code, Some(2));
    assert!(err.contains("0003_bad.expand.sql"), "{err}");
    std::fs::write(m.join("4_x.expand.sql"), "").unwrap();
    let (code, _, err) = run(m);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("4_x.expand.sql: not a migration name"),
        "{err}"
    );
}
