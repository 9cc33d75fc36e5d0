//! The deploy pipeline end to end: the real router supervising real app
//! processes (`bluegreen app`), driven by the real CLI.

use crate::support::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn deploy_toml(bake: &str, keep_warm: &str) -> String {
    format!(
        r#"
[deploy]
deploy_timeout = "4s"
keep_warm = "{keep_warm}"

[deploy.supervisor]
run = "{{bluegreen}} app --listen {{address}} --name {{env}}"
stop_on_exit = true
stop_grace = "2s"

[[deploy.smoke]]
name = "smoke endpoint"
path = "/smoke"
expect_body_contains = "{{version}}"

[deploy.bake]
duration = "{bake}"
interval = "200ms"
min_requests = 10
max_error_rate = 0.05
on_inconclusive = "accept"
"#
    )
}

/// A router with a supervisor pipeline in front of two free ports.
fn pipeline_router(bake: &str, keep_warm: &str) -> RouterBuilder {
    RouterBuilder::addrs(vec![closed_port()], vec![closed_port()])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .drain("1s")
        .extra(&deploy_toml(bake, keep_warm))
}

/// A pipeline router on fixed ports and a state dir, so a restart is the same router.
fn pipeline_router_at(
    ports: (std::net::SocketAddr, std::net::SocketAddr),
    dir: &std::path::Path,
) -> RouterBuilder {
    RouterBuilder::addrs(vec![ports.0], vec![ports.1])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .extra(&deploy_toml("300ms", "0s"))
        .state_dir(dir)
}

/// `bluegreen deploy ARGS` through the CLI; (exit code, stdout, stderr).
fn cli_deploy(router: &RouterProc, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    router.cli(&all)
}

async fn body(router: &RouterProc) -> String {
    get(&h1_client(), &router.url("/"))
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

async fn current(router: &RouterProc) -> serde_json::Value {
    router
        .api("GET", "/api/v1/deploys/current", None, Some(TOKEN))
        .await
        .1
}

/// The record of one step, found by name.
fn step_of<'a>(deploy: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    deploy["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {deploy}"))
}

async fn wait_step(router: &RouterProc, step: &str, state: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("step {step} {state}"),
        || async {
            let d = current(router).await;
            d["steps"].is_array() && step_of(&d, step)["state"] == state
        },
    )
    .await;
}

/// One request: when it started and what came back.
type Sample = (Instant, Result<(u16, String), String>);

/// Live traffic until stopped, every answer kept.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(router: &RouterProc, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, seen, url) = (stop.clone(), seen.clone(), router.url("/"));
                tokio::spawn(async move {
                    let c = h1_client();
                    for _ in 0..200_000 {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let start = Instant::now();
                        let r = get(&c, &url).await;
                        seen.lock().unwrap().push((start, r));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn good_deploys_complete_under_load_with_zero_failed_requests() {
    let router = pipeline_router("1s", "0s").start();
    let (code, out, err) = cli_deploy(&router, &["v1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("deploy #1 of v1 to green succeeded"), "{out}");
    assert_eq!(body(&router).await, "green v1\n");

    let load = Load::start(&router, 8);
    let r2 = std::thread::scope(|s| {
        s.spawn(|| cli_deploy(&router, &["v2", "--reason", "ship it"]))
            .join()
            .unwrap()
    });
    let done = Instant::now();
    let seen = load.stop().await;
    assert_eq!(r2.0, 0, "{}\n{}", r2.1, r2.2);
    let failures: Vec<_> = seen
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((200, _))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        seen.len(),
        &failures[..failures.len().min(3)]
    );
    let bodies = |v: &str| {
        seen.iter()
            .filter(|(_, r)| matches!(r, Ok((_, b)) if b.contains(v)))
            .count()
    };
    assert!(
        bodies("v1") > 0 && bodies("v2") > 0,
        "both versions served under load"
    );
    assert!(seen
        .iter()
        .filter(|(t, _)| *t > done)
        .all(|(_, r)| matches!(r, Ok((_, b)) if b == "blue v2\n")));

    // Every step is recorded with its duration; the bake really waited.
    let (code, out, _) = router.cli(&["history", "--json"]);
    assert_eq!(code, 0);
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deploys = h["deploys"].as_array().unwrap();
    assert_eq!(deploys.len(), 2);
    for d in deploys {
        assert_eq!(d["outcome"], "succeeded", "{d}");
        for s in d["steps"].as_array().unwrap() {
            assert!(
                s["finished_at_ms"].as_u64().unwrap() >= s["started_at_ms"].as_u64().unwrap(),
                "{s}"
            );
        }
    }
    let bake = step_of(&deploys[1], "bake");
    assert!(
        bake["finished_at_ms"].as_u64().unwrap() - bake["started_at_ms"].as_u64().unwrap() >= 1000,
        "{bake}"
    );
    assert_eq!(deploys[1]["options"]["reason"], "ship it");
    assert_eq!(h["releases"]["blue"]["version"], "v2");
    assert_eq!(
        h["releases"]["green"]["running"], false,
        "old side decommissioned"
    );
    let (_, text, _) = router.cli(&["history"]);
    assert!(text.contains("bake done"), "{text}");
    let (_, text, _) = router.cli(&["status"]);
    assert!(
        text.contains("blue   v2") && text.contains("decommissioned"),
        "{text}"
    );
    let (_, json, _) = router.cli(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["releases"]["blue"]["version"], "v2");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_check_leaves_the_live_side_untouched() {
    let router = pipeline_router("300ms", "0s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let (code, out, _) = cli_deploy(&router, &["v2", "--env", "BLUEGREEN_APP_FAIL_HEALTH=1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("health gate: 0/1 upstreams of blue healthy"),
        "{out}"
    );
    assert!(out.contains("503"), "says why: {out}");
    assert!(out.contains("green was never switched away from"), "{out}");
    assert_eq!(body(&router).await, "green v1\n");
    assert_eq!(router.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_smoke_test_names_the_check_and_what_came_back() {
    let router = pipeline_router("300ms", "0s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let (code, out, _) = cli_deploy(&router, &["v2", "--env", "BLUEGREEN_APP_FAIL_SMOKE=1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"smoke test "smoke endpoint" failed: GET /smoke → 500 (expected 200)"#),
        "{out}"
    );
    assert!(out.contains("smoke failure"), "quotes the body: {out}");
    assert_eq!(body(&router).await, "green v1\n");
    // --skip-smoke is honoured and recorded.
    let (code, out, _) = cli_deploy(
        &router,
        &["v3", "--env", "BLUEGREEN_APP_FAIL_SMOKE=1", "--skip-smoke"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("skipped: skipped by --skip-smoke"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_spike_after_the_switch_rolls_back_by_itself() {
    // Every notice of the good deploy and of the automatic rollback is told.
    let receiver = crate::notify::Receiver::start().await;
    let router = pipeline_router("5s", "0s")
        .env("HOOK_SECRET", crate::notify::SECRET)
        .extra(&format!(
            "\n[[notify]]\nname = \"ops\"\nurl = \"http://{}/in\"\nsecret_env = \"HOOK_SECRET\"\n",
            receiver.addr
        ))
        .start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let load = Load::start(&router, 4);
    let (code, out, _) = std::thread::scope(|s| {
        s.spawn(|| cli_deploy(&router, &["v2", "--env", "BLUEGREEN_APP_ERROR_AFTER=3"]))
            .join()
            .unwrap()
    });
    let done = Instant::now();
    wait_until(Duration::from_secs(5), "traffic after the rollback", || {
        let seen = load.seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| *t > done)
                .count()
                > 50
        }
    })
    .await;
    let seen = load.stop().await;
    assert_eq!(code, 3, "rolled back: {out}");
    assert!(
        out.contains("ROLLED BACK") && out.contains("error rate"),
        "{out}"
    );
    assert!(
        seen.iter()
            .filter(|(t, _)| *t > done)
            .all(|(_, r)| matches!(r, Ok((200, b)) if b == "green v1\n")),
        "traffic is back on v1"
    );
    let d = router
        .api("GET", "/api/v1/deploys/2", None, Some(TOKEN))
        .await
        .1;
    assert_eq!(d["outcome"], "rolled_back");
    assert_eq!(d["breach"]["metric"], "error_rate");
    assert!(d["breach"]["observed"].as_f64().unwrap() > 0.05, "{d}");
    assert_eq!(router.status().await["last_switch"]["kind"], "rollback");
    let told = [
        "deploy_started",
        "switched",
        "deploy_succeeded",
        "deploy_started",
        "switched",
        "rolled_back",
        "deploy_rolled_back",
    ];
    wait_until(Duration::from_secs(20), "every notice", || async {
        receiver.kinds().len() >= told.len()
    })
    .await;
    assert_eq!(receiver.kinds(), told, "once each, in order");
    let accepted = receiver.accepted();
    for d in &accepted {
        assert!(crate::notify::signature_ok(d), "{}", d.body);
    }
    let end = accepted[6].json();
    assert_eq!(end["data"]["facts"]["version"], "v2");
    assert_eq!(end["data"]["facts"]["breach"]["metric"], "error_rate");
    assert!(
        end["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("ROLLED BACK"),
        "{end}"
    );
    assert_eq!(accepted[5].json()["data"]["facts"]["actor"], "deploy #2");

    // A rollback now must not go back onto the version the bake rejected.
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("nothing to roll back to") && err.contains("v2"),
        "{err}"
    );
    let (code, _, err) = router.cli(&["rollback", "--to-version", "v2"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("v2 was rejected") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(body(&router).await, "green v1\n", "live untouched");
    // Manual switches, forced ones too, are in the history with who did it.
    let out = Command::new(bin())
        .args([
            "switch",
            "--to",
            "blue",
            "--force",
            "--reason",
            "look at v2",
        ])
        .env("BLUEGREEN_ADMIN", router.admin_url())
        .env("BLUEGREEN_TOKEN", TOKEN)
        .env("BLUEGREEN_ACTOR", "ci-bot")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, out, _) = router.cli(&["switch", "--to", "green", "--reason", "done looking"]);
    assert_eq!(code, 0, "{out}");
    let (code, text, _) = router.cli(&["history"]);
    assert_eq!(code, 0);
    assert!(text.contains("[v2 rejected]"), "{text}");
    assert!(text.contains("rolled back blue -> green: bake:"), "{text}");
    assert!(
        text.contains("switch green -> blue (forced) by ci-bot: look at v2"),
        "{text}"
    );
    let me = "switch blue -> green by cli:";
    let line = text
        .lines()
        .find(|l| l.contains(me))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains('@') && line.ends_with("done looking"),
        "user@host: {line}"
    );
    let v2 = text.find("deploy #2").unwrap();
    let manual = text.find("look at v2").unwrap();
    assert!(v2 < manual, "one timeline, oldest first: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_promote_waits_at_the_gate() {
    let router = pipeline_router("300ms", "0s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let (code, out, _) = cli_deploy(&router, &["v2", "--manual-promote", "--detach"]);
    assert_eq!(code, 0, "{out}");
    wait_step(&router, "gate", "running").await;
    assert_eq!(
        body(&router).await,
        "green v1\n",
        "nothing switches before promote"
    );
    let (code, out, _) = cli_deploy(&router, &["v3"]);
    assert_eq!(code, 1);
    let (_, _, err) = cli_deploy(&router, &["v3"]);
    assert!(err.contains("deploy #2 (v2) is in progress"), "{out}{err}");
    let (code, out, _) = router.cli(&["promote"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(20), "deploy succeeded", || async {
        current(&router).await["outcome"] == "succeeded"
    })
    .await;
    assert_eq!(body(&router).await, "blue v2\n");
    let (code, _, err) = router.cli(&["promote"]);
    assert_eq!(code, 1);
    assert!(err.contains("no deploy is waiting"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_at_the_gate_and_during_the_bake_leave_the_old_side_live() {
    let router = pipeline_router("30s", "0s").start();
    assert_eq!(cli_deploy(&router, &["v1", "--skip-smoke"]).0, 0);

    // At the gate: the follower exits 4 and nothing changed.
    let follower = {
        let admin = router.admin_url();
        std::thread::spawn(move || {
            let out = Command::new(bin())
                .args(["deploy", "v2", "--manual-promote"])
                .env("BLUEGREEN_ADMIN", admin)
                .env("BLUEGREEN_TOKEN", TOKEN)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
    };
    wait_step(&router, "gate", "running").await;
    let (code, out, _) = router.cli(&["abort", "--reason", "wrong build"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = follower.join().unwrap();
    assert_eq!(code, Some(4), "{out}");
    assert!(
        out.contains("ABORTED") && out.contains("wrong build"),
        "{out}"
    );
    assert_eq!(body(&router).await, "green v1\n");

    // During the bake: traffic goes back to the old side.
    assert_eq!(cli_deploy(&router, &["v3", "--detach"]).0, 0);
    wait_step(&router, "bake", "running").await;
    assert_eq!(body(&router).await, "blue v3\n");
    assert_eq!(router.cli(&["abort"]).0, 0);
    wait_until(Duration::from_secs(10), "aborted", || async {
        current(&router).await["outcome"] == "aborted"
    })
    .await;
    assert_eq!(body(&router).await, "green v1\n");
    let (code, _, err) = router.cli(&["abort"]);
    assert_eq!(code, 1);
    assert!(err.contains("no deploy is in progress"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_is_instant_while_warm_and_redeploys_once_decommissioned() {
    // keep_warm: the old side stays up, rollback is a switch.
    let router = pipeline_router("300ms", "60s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    // After the first deploy, blue has never run anything: a rollback there
    // is neither offered nor done, --force or not.
    let (_, text, _) = router.cli(&["status"]);
    assert!(!text.contains("rollback: an instant switch"), "{text}");
    for args in [&["rollback"][..], &["rollback", "--force"]] {
        let (code, out, err) = router.cli(args);
        assert_ne!(code, 0, "{args:?}: {out}{err}");
        assert!(
            err.contains("blue has never run a release"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(cli_deploy(&router, &["v2"]).0, 0);
    assert_eq!(body(&router).await, "blue v2\n");
    // The first deploy had nothing on blue to keep up; the second keeps
    // green up for deploy.keep_warm, and says that is why.
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let detail = |i: usize| step_of(&h["deploys"][i], "decommission")["detail"].to_string();
    assert!(
        detail(0).contains("blue ran nothing before this deploy: nothing to keep up or stop"),
        "{}",
        detail(0)
    );
    assert!(
        detail(1).contains("green kept up")
            && detail(1).contains("(deploy.keep_warm) so rollback stays instant; then stopped"),
        "{}",
        detail(1)
    );
    // Both environments run side by side from v2's deploy step until the
    // stop keep_warm schedules: the record, `history` and its notice say so.
    assert!(
        h["deploys"][0]["side_by_side"].is_null(),
        "a first deploy doubles nothing"
    );
    let both = &h["deploys"][1]["side_by_side"];
    assert!(both["until_ms"].is_null(), "{both}");
    let (since, planned) = (
        both["since_ms"].as_u64().unwrap(),
        both["planned_until_ms"].as_u64().unwrap(),
    );
    // keep_warm plus the steps from the deploy step to the decommission.
    assert!((60_000..90_000).contains(&(planned - since)), "{both}");
    assert!(
        both["detail"]
            .as_str()
            .unwrap()
            .contains("deploy.keep_warm"),
        "{both}"
    );
    let text = router.cli(&["history"]).1;
    assert!(
        text.contains("both environments run side by side for 1m")
            && text
                .contains("in all (green is kept up until its scheduled stop (deploy.keep_warm, or the sessions kept there))"),
        "{text}"
    );
    let (code, out, _) = router.cli(&["rollback"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("green is now live"), "{out}");
    assert_eq!(body(&router).await, "green v1\n");
    // Live again: the stop is called off and both stay up.
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let both = &h["deploys"][1]["side_by_side"];
    assert!(
        both["planned_until_ms"].is_null() && both["until_ms"].is_null(),
        "{both}"
    );
    assert!(
        both["detail"]
            .as_str()
            .unwrap()
            .contains("green is live again"),
        "{both}"
    );
    drop(router);

    // Decommissioned: rollback re-deploys the previous version and says so.
    let router = pipeline_router("300ms", "0s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    assert_eq!(cli_deploy(&router, &["v2"]).0, 0);
    // keep_warm = 0: stopped at once, the time is over.
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let both = &h["deploys"][1]["side_by_side"];
    assert!(
        both["until_ms"].as_u64().unwrap() >= both["since_ms"].as_u64().unwrap(),
        "{both}"
    );
    assert_eq!(both["detail"], "green was stopped", "{both}");
    assert!(router
        .cli(&["history"])
        .1
        .contains("both environments ran side by side for"),);
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("green was decommissioned, so v1 is re-deployed"),
        "{out}"
    );
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(body(&router).await, "green v1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_get_placeholders_and_env_and_their_failures_are_reported() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("deploy.sh");
    let record = dir.path().join("calls.txt");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"args=$1 $2 env=$BLUEGREEN_ENV version=$BLUEGREEN_VERSION upstreams=$BLUEGREEN_UPSTREAMS extra=$EXTRA\" >> {}\necho deploying $2\n[ \"$2\" != bad ] || {{ echo 'disk full' >&2; exit 7; }}\n",
            record.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", hook.to_str().unwrap()])
        .status()
        .unwrap();
    let toml = format!(
        "[deploy]\n[deploy.hooks]\ndeploy = \"{} {{env}} {{version}}\"\n[deploy.bake]\nduration = \"200ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n",
        hook.display()
    );
    let router = RouterBuilder::new(&[&blue], &[&green]).extra(&toml).start();
    router.wait_all_healthy().await;
    let (code, out, _) = cli_deploy(&router, &["v7", "--env", "EXTRA=yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("| deploying v7"),
        "hook output is in the deploy log: {out}"
    );
    let calls = std::fs::read_to_string(&record).unwrap();
    assert!(
        calls.contains(&format!(
            "args=green v7 env=green version=v7 upstreams={} extra=yes",
            green.addr
        )),
        "{calls}"
    );
    let (code, out, _) = cli_deploy(&router, &["bad"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("exit status: 7") && out.contains("disk full"),
        "{out}"
    );
    assert_eq!(router.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_without_a_pipeline_is_a_clear_error() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green]).start();
    let (code, _, err) = cli_deploy(&router, &["v1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no deploy pipeline"), "{err}");
    let (code, _, err) = router.cli(&["deploy", "bad version!"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no deploy pipeline") || err.contains("invalid version"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_survive_a_router_crash_and_are_readopted() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (closed_port(), closed_port());
    let build = || pipeline_router_at(ports, dir.path());
    let mut router = build().start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let pids = router.app_pids();
    assert_eq!(pids.len(), 1);
    router.child.kill().unwrap(); // kill -9
    router.child.wait().unwrap();
    // The app keeps serving on its own.
    let direct = get(&h1_client(), &format!("http://{}/", ports.1))
        .await
        .unwrap();
    assert_eq!(direct, (200, "green v1\n".into()));
    router.kill_apps_on_drop = false; // the app must outlive this router
    drop(router);

    let router = build().start();
    router.wait_until_live_healthy().await;
    assert_eq!(router.app_pids(), pids, "re-adopted, not restarted");
    assert_eq!(body(&router).await, "green v1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_at_every_step_resumes_the_deploy() {
    let steps = [
        "deploy",
        "health",
        "smoke",
        "warm",
        "shadow",
        "gate",
        "switch",
        "bake",
        "decommission",
    ];
    for step in steps {
        for point in ["start", "end"] {
            let at = format!("{step}:{point}");
            let dir = tempfile::tempdir().unwrap();
            let ports = (closed_port(), closed_port());
            let build = || pipeline_router_at(ports, dir.path());
            let mut crashing = build().env("BLUEGREEN_CRASH_AT", &at).start();
            let (status, body_json) = crashing
                .api(
                    "POST",
                    "/api/v1/deploys",
                    Some(r#"{"version":"v1"}"#),
                    Some(TOKEN),
                )
                .await;
            assert_eq!(status, 202, "{body_json}");
            let st = crashing.wait_exit(Duration::from_secs(20));
            assert!(!st.success(), "{at}: the failpoint killed the router");
            crashing.kill_apps_on_drop = false;
            drop(crashing);

            let router = build().start();
            wait_until(
                Duration::from_secs(20),
                &format!("{at}: resumed deploy succeeds"),
                || async {
                    router
                        .api("GET", "/api/v1/deploys/1", None, Some(TOKEN))
                        .await
                        .1["outcome"]
                        == "succeeded"
                },
            )
            .await;
            let st = router.status().await;
            assert_eq!(st["live"], "green", "{at}: {st}");
            assert_eq!(st["generation"], 1, "{at}: switched exactly once");
            assert_eq!(body(&router).await, "green v1\n", "{at}");
            assert_eq!(
                router.app_pids().len(),
                1,
                "{at}: one app process, no strays recorded"
            );
        }
    }
}

/// GETs `path` in a loop until stopped; every answer's status kept.
fn traffic(
    router: &RouterProc,
    path: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<u16>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, url) = (stop.clone(), router.url(path));
    let task = tokio::spawn(async move {
        let c = h1_client();
        let mut seen = Vec::new();
        for _ in 0..100_000 {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            seen.push(get(&c, &url).await.map(|(s, _)| s).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shadow_step_fails_a_version_whose_answers_differ_and_passes_one_that_matches() {
    let router = pipeline_router("300ms", "0s")
        .extra(
            "[deploy.shadow]\nduration = \"20s\"\nrequests = 40\nmin_requests = 20\nmax_diff_rate = 0.05\n\n\
             [shadow]\nignore_paths = [\"/served_at_ns\"]\n",
        )
        .start();
    // Nothing is live yet, so there is nothing to shadow: skipped, not failed.
    let (code, out, err) = cli_deploy(&router, &["v1"]);
    assert_eq!(code, 0, "{out}\n{err}");

    let (stop, task) = traffic(&router, "/price");
    // v2 changes a price: the step finds it and the deploy fails before the switch.
    let (code, out, err) = cli_deploy(&router, &["v2", "--env", "BLUEGREEN_APP_PRICE=12"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("GET /price"), "{all}");
    assert!(all.contains("/price (live 10, idle 12)"), "{all}");
    assert_eq!(
        router.status().await["live"],
        "green",
        "live side untouched"
    );

    // v3 answers the same (its timestamps are ignored by config): it ships.
    let (code, out, err) = cli_deploy(&router, &["v3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    stop.store(true, Ordering::SeqCst);
    let statuses = task.await.unwrap();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "live traffic failed during the shadow steps"
    );
    let (_, json, _) = router.cli(&["history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&json).unwrap();
    let deploys = h["deploys"].as_array().unwrap();
    let v3 = deploys.iter().find(|d| d["version"] == "v3").unwrap();
    let shadow = step_of(v3, "shadow");
    assert_eq!(shadow["state"], "done", "{shadow}");
    assert!(
        shadow["detail"]
            .as_str()
            .unwrap()
            .contains("pairs compared, 0 differing"),
        "{shadow}"
    );
    let v1 = deploys.iter().find(|d| d["version"] == "v1").unwrap();
    assert_eq!(step_of(v1, "shadow")["state"], "skipped");
    assert!(
        step_of(v1, "shadow")["detail"]
            .as_str()
            .unwrap()
            .starts_with("first deploy: no healthy upstream"),
        "{v1}"
    );
    // The shadow report of the last run stays readable.
    let (code, text, _) = router.cli(&["shadow", "report"]);
    assert_eq!(code, 0);
    assert!(text.contains("GET /price"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_warm_step_replays_a_recording_to_the_new_side_before_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warm.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "{{\"v\":1,\"at_ms\":{},\"method\":\"GET\",\"path\":\"/price?n={i}\",\"headers\":[],\"body\":\"\"}}",
                1_700_000_000_000u64 + i * 10
            )
        })
        .collect();
    let write = r#"{"v":1,"at_ms":1700000000100,"method":"POST","path":"/orders","headers":[],"body":"e30="}"#;
    std::fs::write(&file, lines.join("\n") + "\n" + write + "\n").unwrap();
    let router = pipeline_router("300ms", "0s")
        .extra(&format!(
            "[deploy.warm]\nfile = \"{}\"\nspeed = \"max\"\nconcurrency = 2\n",
            file.display()
        ))
        .start();
    let (code, out, err) = cli_deploy(&router, &["v1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, json, _) = router.cli(&["history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&json).unwrap();
    let d = &h["deploys"][0];
    assert_eq!(step_of(d, "warm")["state"], "done", "{d}");
    let log = d["log"].to_string();
    assert!(log.contains("replayed 6 requests"), "{log}");
    assert!(log.contains("200 ×6"), "{log}");
    assert!(
        log.contains("skipping 1 recorded request"),
        "writes are not replayed: {log}"
    );

    // A broken recording fails the deploy before the switch, naming the line.
    std::fs::write(&file, "{\"v\":1}\nnot json\n").unwrap();
    let (code, out, err) = cli_deploy(&router, &["v2"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("warm-up replay"),
        "{out}{err}"
    );
    assert_eq!(router.status().await["live"], "green");
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_that_are_paths_and_loader_variables_are_refused_before_anything_runs() {
    let router = pipeline_router("300ms", "0s").start();
    for (args, want) in [
        (vec![".."], "is not valid"),
        (vec!["../../bin"], "is not valid"),
        (vec!["--", "-rf"], "is not valid"),
        (
            vec!["v2", "--env", "LD_PRELOAD=/tmp/evil.so"],
            "loader variables",
        ),
        (
            vec!["v2", "--env", "LD_LIBRARY_PATH=/tmp"],
            "loader variables",
        ),
        (
            vec!["v2", "--env", "BLUEGREEN_VERSION=v9"],
            "set by bluegreen itself",
        ),
    ] {
        let (code, out, err) = cli_deploy(&router, &args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (code, v) = router
        .api("GET", "/api/v1/deploys", None, Some(TOKEN))
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        v["deploys"].as_array().map(Vec::len),
        Some(0),
        "nothing started: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_an_app_stops_its_whole_process_group() {
    use bluegreen_pipeline::supervisor::group_members;
    // A shell wrapper that leaves a child of its own behind the app.
    let toml = deploy_toml("300ms", "0s").replace(
        "run = \"{bluegreen} app --listen {address} --name {env}\"",
        "run = \"sh -c 'sleep 300 & exec {bluegreen} app --listen {address} --name {env}'\"",
    );
    assert!(toml.contains("sleep 300"), "{toml}");
    let mut router = RouterBuilder::addrs(vec![closed_port()], vec![closed_port()])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .extra(&toml)
        .start();
    let (code, out, _) = cli_deploy(&router, &["v1"]);
    assert_eq!(code, 0, "{out}");
    let pids = router.app_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let members = group_members(pids[0]);
    assert!(members.len() >= 2, "the app and its sleep: {members:?}");
    router.kill_apps_on_drop = false;
    router.signal("TERM");
    assert!(router.wait_exit(Duration::from_secs(20)).success());
    wait_until(Duration::from_secs(5), "the whole group gone", || async {
        group_members(pids[0]).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_record_that_cannot_be_written_fails_the_deploy_before_the_switch() {
    let router = pipeline_router("300ms", "0s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let (code, out, _) = cli_deploy(&router, &["v2", "--manual-promote", "--detach"]);
    assert_eq!(code, 0, "{out}");
    wait_step(&router, "gate", "running").await;
    // The store replaces deploys.json by rename: a non-empty directory in its
    // place makes every write fail, as a full or broken disk would.
    let file = router.state_dir.join("deploys.json");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir_all(file.join("x")).unwrap();
    let (code, out, err) = router.cli(&["promote"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(Duration::from_secs(20), "deploy failed", || async {
        current(&router).await["outcome"] == "failed"
    })
    .await;
    let d = current(&router).await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("could not persist the deploy record"),
        "{d}"
    );
    assert_eq!(step_of(&d, "switch")["state"], "pending", "{d}");
    assert_eq!(
        body(&router).await,
        "green v1\n",
        "the live side never moved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_version_is_stopped_after_keep_failed() {
    let router = RouterBuilder::addrs(vec![closed_port()], vec![closed_port()])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .extra(&deploy_toml("300ms", "0s").replace("[deploy]\n", "[deploy]\nkeep_failed = \"1s\"\n"))
        .start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let (code, out, _) = cli_deploy(&router, &["v2", "--env", "BLUEGREEN_APP_FAIL_SMOKE=1"]);
    assert_eq!(code, 1, "{out}");
    let d = current(&router).await;
    assert!(
        d["log"]
            .to_string()
            .contains("will be stopped in 1s (keep_failed)"),
        "{d}"
    );
    wait_until(Duration::from_secs(10), "the failed v2 stopped", || async {
        let (_, v) = router
            .api("GET", "/api/v1/deploys", None, Some(TOKEN))
            .await;
        v["releases"]["blue"]["running"] == false
    })
    .await;
    let (_, v) = router
        .api("GET", "/api/v1/deploys", None, Some(TOKEN))
        .await;
    assert_eq!(v["releases"]["blue"]["version"], "v2", "{v}");
    assert_eq!(
        v["releases"]["green"]["running"], true,
        "the live side runs on: {v}"
    );
    assert_eq!(body(&router).await, "green v1\n");
}

/// Polls a deploy until it has an outcome.
async fn finished(router: &RouterProc, id: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = router
            .api("GET", &format!("/api/v1/deploys/{id}"), None, Some(TOKEN))
            .await
            .1;
        if d["outcome"].is_string() && d["outcome"] != "running" {
            return d;
        }
        assert!(Instant::now() < deadline, "deploy {id} did not finish: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_during_the_bake_keeps_its_end_and_still_rolls_back_a_breach() {
    let router = pipeline_router("5s", "0s").start();
    let successors = crate::upgrade::Successors::default();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let load = Load::start(&router, 4);

    // A good version: the bake, begun in the first process, ends in the
    // second at its original time.
    let (status, d) = router
        .api(
            "POST",
            "/api/v1/deploys",
            Some(r#"{"version": "v2"}"#),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 202, "{d}");
    let id = d["id"].as_u64().unwrap();
    wait_step(&router, "bake", "running").await;
    let (code, out, err) = successors.upgrade(&router, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let d = finished(&router, id).await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    let bake = step_of(&d, "bake");
    let took = bake["finished_at_ms"].as_u64().unwrap() - bake["started_at_ms"].as_u64().unwrap();
    assert!(
        (5000..6500).contains(&took),
        "the bake took {took} ms across the handover, not its 5 s: {bake}"
    );

    // A version whose errors start once the new process bakes it (a
    // file the app checks): the new process's bake sees them and rolls
    // back. (Failing from the switch on, it could be rolled back before
    // the upgrade began.)
    let flag = tempfile::tempdir().unwrap();
    let fail = flag.path().join("fail");
    let body_json = serde_json::json!({
        "version": "v3",
        "env": {"BLUEGREEN_APP_ERROR_FILE": fail.to_str().unwrap()},
    })
    .to_string();
    let (status, d) = router
        .api("POST", "/api/v1/deploys", Some(&body_json), Some(TOKEN))
        .await;
    assert_eq!(status, 202, "{d}");
    let id = d["id"].as_u64().unwrap();
    wait_step(&router, "bake", "running").await;
    let (code, out, err) = successors.upgrade(&router, &[]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(&fail, "").unwrap();
    let d = finished(&router, id).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert!(d["breach"].is_object(), "{d}");
    let seen = load.stop().await;
    // The handovers themselves failed nothing (the errors are v3's own).
    let resets: Vec<_> = seen.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        resets.is_empty(),
        "{} requests got no answer: {:?}",
        resets.len(),
        &resets[..resets.len().min(3)]
    );
    assert_eq!(body(&router).await, "blue v2\n");
}

/// Clients that each send a different `X-User`, so a weighted split spreads
/// them; every answer kept.
fn user_load(
    router: &RouterProc,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sample>>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let tasks = (0..6)
        .map(|i| {
            let (stop, seen, url) = (stop.clone(), seen.clone(), router.url("/"));
            tokio::spawn(async move {
                let c = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
                for n in 0..200_000u32 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let req = http::Request::get(&url)
                        .header("x-user", format!("user-{i}-{n}"))
                        .body(http_body_util::Empty::new())
                        .unwrap();
                    let start = Instant::now();
                    let r = match c.request(req).await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let body = http_body_util::BodyExt::collect(resp.into_body())
                                .await
                                .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
                                .unwrap_or_default();
                            Ok((status, body))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    seen.lock().unwrap().push((start, r));
                }
            })
        })
        .collect();
    (seen, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_deploy_steps_through_its_shares_and_a_breach_sends_everyone_back() {
    let router = pipeline_router("1s", "0s")
        .proxy("sticky_header = \"X-User\"")
        .start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = user_load(&router, stop.clone());

    // A good version: 10 %, then 50 %, then the switch.
    let (code, out, err) = cli_deploy(&router, &["v2", "--canary", "10,50", "--step", "1s"]);
    assert_eq!(code, 0, "{out}{err}");
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let d = &h["deploys"][1];
    let canary = step_of(d, "canary");
    assert_eq!(canary["state"], "done", "{canary}");
    let detail = canary["detail"].as_str().unwrap();
    assert!(detail.contains("10%") && detail.contains("50%"), "{detail}");
    assert!(
        router.status().await["split"].is_null(),
        "the switch ended the split"
    );
    assert_eq!(body(&router).await, "blue v2\n");

    // A version that fails: the breach at 20 % sends everyone back at once.
    let (code, out, err) = cli_deploy(
        &router,
        &[
            "v3",
            "--canary",
            "20",
            "--step",
            "5s",
            "--env",
            "BLUEGREEN_APP_ERROR_AFTER=3",
        ],
    );
    assert_eq!(code, 3, "rolled back: {out}{err}");
    assert!(out.contains("canary at 20%"), "{out}");
    assert!(router.status().await["split"].is_null());
    assert_eq!(router.status().await["live"], "blue");
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // During the canaries both versions answered; nothing failed to answer.
    let bodies = |v: &str| {
        seen.iter()
            .filter(|(_, r)| matches!(r, Ok((_, b)) if b.contains(v)))
            .count()
    };
    assert!(bodies("green v1") > 0 && bodies("blue v2") > 0 && bodies("green v3") > 0);
    let resets: Vec<_> = seen.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(resets.is_empty(), "{:?}", &resets[..resets.len().min(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_old_side_stays_up_for_its_sessions_and_the_deploy_ends_meanwhile() {
    let router = pipeline_router("300ms", "0s")
        .extra("\n[sessions]\nwindow = \"30s\"\n")
        .start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    // A client with a session on v1 (green).
    let out = curl(&["-i", &router.url("/")]).1;
    assert!(out.ends_with("green v1\n"), "{out}");
    let cookie = out
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap().to_string())
        .expect("a session cookie");
    let deploy = std::thread::spawn({
        let admin = router.admin_url();
        move || {
            std::process::Command::new(bin())
                .args(["deploy", "v2"])
                .env("BLUEGREEN_ADMIN", admin)
                .env("BLUEGREEN_TOKEN", TOKEN)
                .output()
                .unwrap()
        }
    });
    // The session keeps using v1 after the switch, for a while.
    wait_until(Duration::from_secs(20), "the switch to v2", || async {
        body(&router).await == "blue v2\n"
    })
    .await;
    for _ in 0..5 {
        let (_, b) = curl(&["-H", &format!("cookie: {cookie}"), &router.url("/")]);
        assert_eq!(b, "green v1\n", "the session moved before it was done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = deploy.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let dec = step_of(&h["deploys"][1], "decommission");
    let detail = dec["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("green kept up") && detail.contains("for the sessions kept there"),
        "{dec}"
    );
}

/// A pipeline whose bake and canary decide on evidence only: no
/// `on_inconclusive = "accept"` as the other tests here have.
fn strict_router(bake: &str) -> RouterBuilder {
    RouterBuilder::addrs(vec![closed_port()], vec![closed_port()])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .drain("1s")
        .extra(&deploy_toml(bake, "60s").replace("on_inconclusive = \"accept\"\n", ""))
}

/// A bake that sees too little traffic is never a pass (the pipeline's
/// in-process tests hold the rule: `runner/bake.rs`); here, through the
/// real CLI, that the first release passes saying why, and that
/// `--accept-inconclusive` reaches the record and passes a silent bake.
#[tokio::test(flavor = "multi_thread")]
async fn a_bake_without_evidence_is_never_a_pass() {
    let router = strict_router("400ms").start();
    let (code, out, err) = cli_deploy(&router, &["v1"]);
    assert_eq!(code, 0, "{out}{err}");
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let bake = step_of(&h["deploys"][0], "bake")["detail"].to_string();
    assert!(
        bake.contains("the first release: nothing to go back to"),
        "{bake}"
    );
    assert_eq!(body(&router).await, "green v1\n");

    let (code, out, err) = cli_deploy(&router, &["v2", "--accept-inconclusive"]);
    assert_eq!(code, 0, "{out}{err}");
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let d = &h["deploys"][1];
    assert_eq!(d["options"]["accept_inconclusive"], true, "{d}");
    let bake = step_of(d, "bake")["detail"].to_string();
    assert!(
        bake.contains("passed as inconclusive (--accept-inconclusive)"),
        "{bake}"
    );
}

/// Every client behind one address and no sticky header: a 10 % canary
/// sends none of them to the new side. That never switches everyone: the
/// step says why (one address) and the deploy fails with everyone still on
/// the old side; with a sticky header the same canary passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_reaches_nobody_never_switches_everyone() {
    let router = strict_router("400ms").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (_seen, tasks) = user_load(&router, stop.clone());
    router
        .start_deploy("{\"version\":\"v2\",\"canary\":[10],\"step\":\"2s\"}")
        .await;
    // Said in `status` while the share runs, not only at its end.
    wait_until(
        Duration::from_secs(20),
        "status names the one address",
        || async {
            let (_, out, _) = router.cli_with_token(&["status"], TOKEN).await;
            out.contains("every client may hash from one address")
        },
    )
    .await;
    let d = router.wait_deploy_end(Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "failed", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("every client may hash from one address"),
        "{d}"
    );
    assert!(router.status().await["split"].is_null());
    assert_eq!(router.status().await["live"], "green");
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    drop(router);

    // With the users told apart (their X-User header), the share reaches them.
    let router = strict_router("400ms")
        .proxy("sticky_header = \"X-User\"")
        .start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (_seen, tasks) = user_load(&router, stop.clone());
    let (code, out, err) = cli_deploy(&router, &["v2", "--canary", "10", "--step", "500ms"]);
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(code, 0, "{out}{err}");
}

/// A release that answers 401 to every logged-in user (its sessions lost)
/// is rolled back: its 4xx rate is judged against the old side's, and the
/// reason names it. The same users on a good release pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_loses_its_users_sessions_is_rolled_back() {
    let router = pipeline_router("2s", "60s").start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (_seen, tasks) = user_load(&router, stop.clone());
    let (code, out, err) = cli_deploy(&router, &["v2", "--env", "BLUEGREEN_APP_LOSE_SESSIONS=1"]);
    let all = format!("{out}{err}");
    assert_eq!(code, 3, "rolled back: {all}");
    assert!(all.contains("4xx rate"), "{all}");
    assert_eq!(router.status().await["live"], "green");
    let (code, out, err) = cli_deploy(&router, &["v3"]);
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(code, 0, "a good release passes: {out}{err}");
}

/// `on_inconclusive = "hold"`: a bake with too little traffic waits for
/// `bluegreen promote`, which accepts it, and the record says so.
#[tokio::test(flavor = "multi_thread")]
async fn an_inconclusive_bake_can_hold_for_promote() {
    let router = RouterBuilder::addrs(vec![closed_port()], vec![closed_port()])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .drain("1s")
        .extra(&deploy_toml("400ms", "60s").replace(
            "on_inconclusive = \"accept\"\n",
            "on_inconclusive = \"hold\"\n",
        ))
        .start();
    assert_eq!(cli_deploy(&router, &["v1"]).0, 0);
    router.start_deploy("{\"version\":\"v2\"}").await;
    wait_until(Duration::from_secs(20), "the bake holds", || async {
        router.current_deploy().await["held"].is_string()
    })
    .await;
    let (code, out, err) = router.cli(&["promote"]);
    assert_eq!(code, 0, "{out}{err}");
    let d = router.wait_deploy_end(Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    assert!(
        d["log"]
            .to_string()
            .contains("accepted by `bluegreen promote`"),
        "{d}"
    );
}
