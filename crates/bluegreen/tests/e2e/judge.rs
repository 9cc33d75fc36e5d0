//! The bake's judgment against real releases at a modest, steady rate (40
//! requests a second, where a p99 can never be judged): a release that is
//! 8x slower, burns 4x the CPU per request, leaks memory, or reports a bad
//! number to a real Prometheus is rolled back with the metric named; the
//! same good version deployed again passes; a metric source that goes away
//! mid-bake makes the bake inconclusive (held), never a pass.

use crate::support::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A supervisor pipeline whose bake judges one-second windows.
fn judge_toml(bake: &str, extra: &str, on_inconclusive: &str) -> String {
    format!(
        r#"
[deploy]
deploy_timeout = "6s"
keep_warm = "60s"

[deploy.supervisor]
run = "{{bluegreen}} app --listen {{address}} --name {{env}}"
stop_on_exit = true
stop_grace = "2s"

[deploy.bake]
duration = "{bake}"
interval = "1s"
min_requests = 10
max_error_rate = 0.05
consecutive = 2
on_inconclusive = "{on_inconclusive}"
{extra}"#
    )
}

fn judge_router(blue: SocketAddr, green: SocketAddr, bake: &str, extra: &str) -> RouterBuilder {
    judge_router_holding(blue, green, bake, extra, "accept")
}

fn judge_router_holding(
    blue: SocketAddr,
    green: SocketAddr,
    bake: &str,
    extra: &str,
    on_inconclusive: &str,
) -> RouterBuilder {
    RouterBuilder::addrs(vec![blue], vec![green])
        .health("interval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .drain("1s")
        .extra(&judge_toml(bake, extra, on_inconclusive))
}

/// GET / at `rps` requests a second, each on its own task (a slow answer
/// never slows the rate), bounded to 90 s and 5,000 requests; hands back
/// the statuses (0: no answer).
struct Paced {
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<Vec<u16>>,
}

impl Paced {
    fn start(router: &RouterProc, rps: u64) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let answered: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let count = answered.clone();
        let url = router.url("/");
        let task = tokio::spawn(async move {
            let client = h1_client();
            let seen: Arc<Mutex<Vec<u16>>> = Arc::default();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / rps));
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut inflight = Vec::new();
            for i in 0..5_000u64 {
                tick.tick().await;
                if flag.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let (client, url, seen) = (client.clone(), format!("{url}?n={i}"), seen.clone());
                let count = count.clone();
                inflight.push(tokio::spawn(async move {
                    let s = get(&client, &url).await.map(|(s, _)| s).unwrap_or(0);
                    seen.lock().unwrap().push(s);
                    count.fetch_add(1, Ordering::SeqCst);
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
            let v = seen.lock().unwrap().clone();
            v
        });
        Paced {
            stop,
            answered,
            task,
        }
    }

    async fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

fn deploy(router: &RouterProc, version: &str, env: &[&str]) -> (i32, String) {
    let mut args = vec!["deploy", version];
    for e in env {
        args.push("--env");
        args.push(e);
    }
    let (code, out, err) = router.cli(&args);
    (code, format!("{out}{err}"))
}

/// At 40 requests a second a window holds 40 requests: a p99 needs 500, so
/// only the rank test can see that v2 is 8x slower, and it does within the
/// bake. Fifteen deploys of the unchanged version all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_forty_requests_a_second_an_eight_times_slower_release_is_rolled_back() {
    let router = judge_router(closed_port(), closed_port(), "3s", "").start();
    let good = "BLUEGREEN_APP_DELAY_MS=2";
    assert_eq!(deploy(&router, "v1", &[good]).0, 0);
    let load = Paced::start(&router, 40);
    wait_until(Duration::from_secs(40), "a baseline under load", || async {
        load.answered.load(Ordering::SeqCst) >= 200
    })
    .await;
    let (code, all) = deploy(&router, "v2", &["BLUEGREEN_APP_DELAY_MS=16"]);
    assert_eq!(code, 3, "rolled back: {all}");
    assert!(
        all.contains("latency") && all.contains("Mann-Whitney"),
        "the reason names the rank test: {all}"
    );
    assert_eq!(router.status().await["live"], "green", "back on v1");
    let mut passed = 0;
    for i in 0..15 {
        let (code, all) = deploy(&router, &format!("v1.{i}"), &[good]);
        assert_eq!(code, 0, "deploy {i} of an unchanged version: {all}");
        passed += 1;
    }
    let statuses = load.stop().await;
    assert_eq!(passed, 15);
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "every request answered 200 across 17 deploys");
}

/// The app's own resources, read by the supervisor: 4x the CPU per request
/// (spent off the request path, so latency does not give it away) and a
/// leak of 2 MiB a second are each rolled back with the metric named; the
/// good version deployed again passes. The dashboard's data (status) shows
/// each side's resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_and_memory_regressions_are_rolled_back_by_name() {
    let router = judge_router(closed_port(), closed_port(), "12s", "").start();
    let good = "BLUEGREEN_APP_CPU_MS=3";
    assert_eq!(deploy(&router, "v1", &[good]).0, 0);
    let load = Paced::start(&router, 40);
    // The old side's baseline: 300 requests of it live under load.
    wait_until(Duration::from_secs(40), "a baseline under load", || async {
        load.answered.load(Ordering::SeqCst) >= 300
    })
    .await;
    let app = router.status().await["resources"]["green"].clone();
    assert!(
        app["cpu_ms_per_request"].as_f64().is_some_and(|x| x > 1.0)
            && app["rss_bytes"].as_u64().is_some_and(|x| x > 1_000_000)
            && app["version"] == "v1",
        "status shows the live side's app: {app}"
    );
    let (code, all) = deploy(&router, "v2", &["BLUEGREEN_APP_CPU_MS=12"]);
    assert_eq!(code, 3, "rolled back: {all}");
    assert!(all.contains("cpu_per_request"), "named: {all}");
    let (code, all) = deploy(&router, "v3", &[good, "BLUEGREEN_APP_LEAK_MIB_PER_S=2"]);
    assert_eq!(code, 3, "rolled back: {all}");
    assert!(all.contains("rss_growth"), "named: {all}");
    let (code, all) = deploy(&router, "v4", &[good]);
    assert_eq!(code, 0, "the good version again passes: {all}");
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let report = h["deploys"][0]["report"].to_string();
    assert!(
        report.contains("cpu_per_request") && report.contains("rss_growth"),
        "the record keeps the table: {report}"
    );
    let statuses = load.stop().await;
    assert!(statuses.iter().all(|s| *s == 200), "no request failed");
}

/// A real Prometheus, scraping both sides' apps every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[SocketAddr]) -> Option<Prometheus> {
        let bin = which("prometheus")?;
        let dir = tempfile::tempdir().unwrap();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .unwrap();
        let addr = closed_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let ready = format!("http://{addr}/-/ready");
        wait_until(Duration::from_secs(30), "Prometheus is ready", || async {
            get(&h1_client(), &ready).await.is_ok_and(|(s, _)| s == 200)
        })
        .await;
        Some(p)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `[[deploy.analysis]]` against a real Prometheus: a query that breaks on
/// v2 rolls it back, naming the metric; with Prometheus stopped mid-bake
/// the bake is inconclusive with the reason (held for promote: no
/// rollback, no pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prometheus_metric_judges_the_bake_and_its_absence_is_no_pass() {
    let (blue, green) = (closed_port(), closed_port());
    let Some(mut prom) = Prometheus::start(&[blue, green]).await else {
        panic!(
            "prometheus is not installed: scripts/test installs it (apt-get install prometheus)"
        );
    };
    let analysis = format!(
        r#"
[[deploy.analysis]]
name = "queue_depth"
source = "prometheus"
address = "http://{}"
query = 'max(app_queue_depth{{version="{{version}}"}})'
max = 50
"#,
        prom.addr
    );
    let router = judge_router_holding(blue, green, "8s", &analysis, "hold").start();
    assert_eq!(deploy(&router, "v1", &[]).0, 0);
    let load = Paced::start(&router, 40);
    let (code, all) = deploy(&router, "v2", &["BLUEGREEN_APP_QUEUE_DEPTH=100"]);
    assert_eq!(code, 3, "rolled back: {all}");
    assert!(
        all.contains("queue_depth 100"),
        "named with its value: {all}"
    );
    assert_eq!(router.status().await["live"], "green", "back on v1");

    // Prometheus gone mid-bake: held with the reason, traffic stays.
    router.start_deploy("{\"version\":\"v3\"}").await;
    wait_until(
        Duration::from_secs(30),
        "the bake has read the metric",
        || async {
            let d = router.current_deploy().await;
            d["report"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["name"] == "queue_depth" && x["verdict"] == "pass")
            })
        },
    )
    .await;
    prom.stop();
    wait_until(Duration::from_secs(30), "the bake holds", || async {
        router.current_deploy().await["held"].is_string()
    })
    .await;
    let d = router.current_deploy().await;
    let why = d["held"].as_str().unwrap();
    assert!(why.contains("queue_depth: no data (prometheus:"), "{why}");
    assert_eq!(
        router.status().await["live"],
        "blue",
        "no rollback: v3 stays live"
    );
    let (code, out, err) = router.cli(&["abort"]);
    assert_eq!(code, 0, "{out}{err}");
    let d = router.wait_deploy_end(Duration::from_secs(20)).await;
    assert_ne!(d["outcome"], "succeeded", "never a pass: {d}");
    load.stop().await;
}
