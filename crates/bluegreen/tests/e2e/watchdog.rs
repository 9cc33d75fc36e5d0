//! The bake's watchdog on every node (real etcd, three router nodes as
//! real processes, under load): the deploy lock's holder is killed mid-bake
//! while the new version starts failing, and a node that sees the errors in
//! its own traffic rolls back long before the holder's lease could end and
//! another node take the deploy over. A healthy bake whose holder dies is
//! left alone for the takeover to pass.

use crate::support::*;
use bluegreen_store::etcd::testing::EtcdServer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The holder's lease: the takeover cannot come before 2/3 of it (its
/// last renewal was at most a third of it before the kill).
const LEASE_TTL_S: u64 = 9;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A node with a pipeline whose bake lasts `bake`.
fn start(
    ep: &[&str],
    prefix: &str,
    name: &str,
    blue: &Backend,
    green: &Backend,
    bake: &str,
) -> RouterProc {
    RouterBuilder::new(&[blue], &[green])
        .etcd(ep, prefix, name, &format!("lease_ttl = \"{LEASE_TTL_S}s\""))
        .extra(&format!(
            "[deploy]\ndeploy_timeout = \"5s\"\nkeep_warm = \"1m\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"{bake}\"\ninterval = \"200ms\"\nmin_requests = 10\nmax_error_rate = 0.05\non_inconclusive = \"accept\"\n"
        ))
        .start()
}

/// Bounded GETs to loopback, each answer's status with when it came.
struct Stamped {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u64, u16)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stamped {
    fn start(bases: &[String], fail: Arc<AtomicBool>) -> Stamped {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks = bases
            .iter()
            .map(|base| {
                let (stop, seen, fail, base) =
                    (stop.clone(), seen.clone(), fail.clone(), base.clone());
                tokio::spawn(async move {
                    let client = h1_client();
                    let deadline = Instant::now() + Duration::from_secs(90);
                    for _ in 0..40_000u64 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let path = if fail.load(Ordering::SeqCst) {
                            "/fail"
                        } else {
                            "/ok"
                        };
                        let status = get(&client, &format!("{base}{path}"))
                            .await
                            .map(|(s, _)| s)
                            .unwrap_or(0);
                        seen.lock().unwrap().push((unix_ms(), status));
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Stamped { stop, seen, tasks }
    }

    async fn stop(self) -> Vec<(u64, u16)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap());
        seen.sort();
        seen
    }
}

/// Three nodes, healthy and listed, and a deploy of v2 on `a` in its bake.
async fn baking(
    prefix: &str,
    bake: &str,
    ep: &[&str],
    blue: &Backend,
    green: &Backend,
) -> [RouterProc; 3] {
    let nodes = ["a", "b", "c"].map(|n| start(ep, prefix, n, blue, green, bake));
    for n in &nodes {
        n.wait_all_healthy().await;
        wait_until(Duration::from_secs(10), "every node listed", || async {
            n.status().await["cluster"]["nodes"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
        })
        .await;
    }
    nodes
}

async fn wait_bake_running(n: &RouterProc) {
    wait_until(Duration::from_secs(20), "the deploy bakes", || async {
        n.current_deploy().await["steps"]
            .as_array()
            .is_some_and(|s| {
                s.iter()
                    .any(|s| s["step"] == "bake" && s["state"] == "running")
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_rolls_back_on_its_own_errors_while_the_bakes_holder_is_gone() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let [mut a, b, c] = baking("/bluegreen/w1", "60s", &ep, &blue, &green).await;
    let fail = Arc::new(AtomicBool::new(false));
    let load = Stamped::start(&[b.url(""), c.url("")], fail.clone());
    a.start_deploy("{\"version\":\"v2\"}").await;
    wait_bake_running(&a).await;
    for n in [&b, &c] {
        wait_until(
            Duration::from_secs(10),
            "green is live everywhere",
            || async { n.status().await["live"] == "green" },
        )
        .await;
    }
    // The holder dies, and at that moment the new version starts failing.
    a.child.kill().unwrap();
    let killed_ms = unix_ms();
    fail.store(true, Ordering::SeqCst);
    a.child.wait().unwrap();
    wait_until(Duration::from_secs(30), "live is blue again", || async {
        b.status().await["live"] == "blue" && c.status().await["live"] == "blue"
    })
    .await;
    let last = b.status().await["last_switch"].clone();
    let switched_ms = last["at_unix_ms"].as_u64().unwrap();
    // The takeover ends the deploy (after the lease), rolled back, unjudged.
    let d = b.wait_deploy_end(Duration::from_secs(40)).await;
    let seen = load.stop().await;
    let first_500 = seen
        .iter()
        .find(|(at, s)| *at >= killed_ms && *s == 500)
        .map(|(at, _)| *at)
        .expect("clients saw the new version fail");
    let last_500 = seen
        .iter()
        .filter(|(_, s)| *s == 500)
        .map(|(at, _)| *at)
        .max()
        .unwrap();
    let errors = seen.iter().filter(|(_, s)| *s == 500).count();
    eprintln!(
        "watchdog: first 500 -> switch back {} ms ({} ms after the kill); clients got {errors} 500s over {} ms; lease_ttl {LEASE_TTL_S}s",
        switched_ms.saturating_sub(first_500),
        switched_ms - killed_ms,
        last_500 - first_500
    );
    assert!(
        last["actor"]
            .as_str()
            .unwrap()
            .starts_with("watchdog on node "),
        "{last}\nb: {}\nc: {}",
        b.stderr(),
        c.stderr()
    );
    assert_eq!(last["kind"], "rollback", "{last}");
    // Long before the holder's lease could end (its last renewal was at
    // most a third of it before the kill): no takeover did this.
    assert!(
        switched_ms - killed_ms < LEASE_TTL_S * 1000 * 2 / 3,
        "rolled back {} ms after the kill",
        switched_ms - killed_ms
    );
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let by = d["rolled_back_by"]
        .as_str()
        .expect("rolled_back_by")
        .to_string();
    assert!(by == "b" || by == "c", "{d}");
    assert_eq!(d["breach"]["metric"], "error_rate", "{d}");
    assert!(d["breach"]["observed"].as_f64().unwrap() > 0.05, "{d}");
    assert_eq!(d["breach"]["limit"], 0.05, "{d}");
    assert!(
        d["log"]
            .to_string()
            .contains(&format!("node {by} rolled back to blue")),
        "{d}"
    );
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("while the deploy lock's holder (a) was gone"),
        "{d}"
    );
    // The bake was not passed nor the old side stopped: no decommission
    // step ran, the failed green is the one scheduled to stop, blue serves.
    let steps = d["steps"].as_array().unwrap();
    let decommission = steps.iter().find(|s| s["step"] == "decommission").unwrap();
    assert_eq!(decommission["state"], "pending", "{d}");
    assert!(
        d["log"].to_string().contains("v2 on green will be stopped"),
        "{d}"
    );
    for n in [&b, &c] {
        let (code, body) = curl(&[&n.url("/ok")]);
        assert_eq!((code, body.as_str()), (0, "blue"));
    }
    // The errors ended with the switch back (the other node applies it
    // from its watch; generous for a loaded machine).
    assert!(
        last_500 < switched_ms + 5000,
        "500s went on {} ms after the switch back",
        last_500.saturating_sub(switched_ms)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_bake_whose_holder_dies_is_not_rolled_back_by_the_watchdog() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let [mut a, b, c] = baking("/bluegreen/w2", "4s", &ep, &blue, &green).await;
    let load = Stamped::start(&[b.url(""), c.url("")], Arc::new(AtomicBool::new(false)));
    a.start_deploy("{\"version\":\"v2\"}").await;
    wait_bake_running(&a).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // The takeover resumes the bake and passes it.
    let d = b.wait_deploy_end(Duration::from_secs(60)).await;
    let seen = load.stop().await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    assert!(d["rolled_back_by"].is_null(), "{d}");
    for n in [&b, &c] {
        assert_eq!(n.status().await["live"], "green");
    }
    let s = b.status().await;
    assert_eq!(s["last_switch"]["kind"], "switch", "{s}");
    assert!(seen.iter().filter(|(_, st)| *st == 200).count() > 100);
    assert!(seen.iter().all(|(_, st)| *st == 200), "a request failed");
}
