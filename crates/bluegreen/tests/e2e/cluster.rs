//! Several router nodes sharing one state in etcd (real etcd processes in
//! temp dirs on free ports): a switch through one node is applied by all
//! before it returns, concurrent switches, a node killed mid-switch, etcd
//! lost and back (fail static, then catching up with what changed), watch
//! compaction, a deploy taken over from a dead node, a bake that sees the
//! errors of one node.

use crate::support::*;
use bluegreen_store::etcd::testing::EtcdServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A router node on `etcd` under `prefix`.
fn node(
    etcd: &[&str],
    prefix: &str,
    name: &str,
    blue: &Backend,
    green: &Backend,
    more: &str,
) -> RouterProc {
    RouterBuilder::new(&[blue], &[green])
        .etcd(etcd, prefix, name, more)
        .start()
}

/// One request of the load, as sent and as answered.
struct Sample {
    sent: Instant,
    answered: Instant,
    body: String,
    result: Result<(u16, String), String>,
}

/// Bounded load on every node: POSTs with distinct paths, queries and
/// bodies, each answer checked later against what was sent.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Vec<Arc<AtomicU64>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(nodes: &[&RouterProc]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut sent = Vec::new();
        let mut tasks = Vec::new();
        for (k, n) in nodes.iter().enumerate() {
            let count = Arc::new(AtomicU64::new(0));
            sent.push(count.clone());
            let (stop, samples, base) = (stop.clone(), samples.clone(), n.url(""));
            tasks.push(tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let deadline = Instant::now() + Duration::from_secs(60);
                for i in 0..20_000u64 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        break;
                    }
                    let body = format!("node{k}-req{i}-{}", "x".repeat((i % 7) as usize));
                    let req = http::Request::post(format!("{base}/echo?n={i}&k={k}"))
                        .header("x-request-no", i.to_string())
                        .body(Full::new(Bytes::from(body.clone())))
                        .unwrap();
                    let sent_at = Instant::now();
                    let result = match client.request(req).await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            match r.into_body().collect().await {
                                Ok(b) => Ok((
                                    status,
                                    String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                                )),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    samples.lock().unwrap().push(Sample {
                        sent: sent_at,
                        answered: Instant::now(),
                        body,
                        result,
                    });
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        Load {
            stop,
            sent,
            samples,
            tasks,
        }
    }

    /// Waits until every node got `more` requests beyond what it had.
    async fn advance(&self, more: u64) {
        let marks: Vec<u64> = self.sent.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        wait_until(Duration::from_secs(20), "load on every node", || async {
            self.sent
                .iter()
                .zip(&marks)
                .all(|(c, m)| c.load(Ordering::SeqCst) >= m + more)
        })
        .await;
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// The side that answered, after checking the request arrived whole.
fn side_of(s: &Sample) -> &str {
    let (status, text) = s
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    assert_eq!(*status, 200, "answer {text:?}");
    let (side, echoed) = text.split_once(':').expect("side:body");
    assert_eq!(echoed, s.body, "the body arrived altered");
    side
}

async fn cli(n: &RouterProc, args: &[&str]) -> (i32, String, String) {
    n.cli_with_token(args, TOKEN).await
}

/// Waits until `n` lists `count` nodes (each reports itself once it has a
/// session with etcd).
async fn wait_nodes(n: &RouterProc, count: usize) {
    wait_until(Duration::from_secs(10), "every node reported", || async {
        n.status().await["cluster"]["nodes"]
            .as_array()
            .is_some_and(|a| a.len() == count)
    })
    .await;
}

async fn live_of(n: &RouterProc) -> String {
    n.status().await["live"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_through_one_node_is_applied_by_every_node_before_it_returns() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let nodes: Vec<RouterProc> = ["router-a", "router-b", "router-c"]
        .iter()
        .map(|n| node(&ep, "/bluegreen/t1", n, &blue, &green, ""))
        .collect();
    for n in &nodes {
        n.wait_all_healthy().await;
        wait_nodes(n, 3).await;
    }
    let load = Load::start(&nodes.iter().collect::<Vec<_>>());
    load.advance(30).await;
    let called = Instant::now();
    let (code, out, err) = cli(&nodes[0], &["switch", "--to", "green"]).await;
    let returned = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied on all 3 nodes"), "{out}");
    // One request per node may have been in flight when the call returned.
    load.advance(31).await;
    let samples = load.finish().await;
    let (mut before, mut after) = (0, 0);
    for s in &samples {
        let side = side_of(s);
        if s.answered < called {
            assert_eq!(side, "blue", "answered before the switch was asked for");
            before += 1;
        }
        if s.sent > returned {
            assert_eq!(
                side, "green",
                "sent after the switch returned, answered by the old side"
            );
            after += 1;
        }
    }
    assert!(
        before >= 90 && after >= 90,
        "{before} before, {after} after"
    );
    // Every node says so, and lists every node as synced.
    for n in &nodes {
        let s = n.status().await;
        assert_eq!(s["live"], "green");
        let listed = s["cluster"]["nodes"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{s}");
        assert!(
            listed
                .iter()
                .all(|n| n["synced"] == true && n["generation"] == 1),
            "{s}"
        );
    }
    let (_, text, _) = cli(&nodes[1], &["status"]).await;
    assert!(
        text.contains("router-c") && text.contains("SYNCED") && !text.contains("STALE"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_switches_on_two_nodes_one_wins_the_other_is_told() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let a = node(&ep, "/bluegreen/t2", "a", &blue, &green, "");
    let b = node(&ep, "/bluegreen/t2", "b", &blue, &green, "");
    a.wait_all_healthy().await;
    b.wait_all_healthy().await;
    wait_nodes(&a, 2).await;
    wait_nodes(&b, 2).await;
    let mut conflicts = 0;
    for round in 0..6 {
        let to = if round % 2 == 0 { "green" } else { "blue" };
        let body = format!("{{\"to\":\"{to}\",\"reason\":\"round {round}\"}}");
        let (ra, rb) = tokio::join!(
            a.api("POST", "/api/v1/switch", Some(&body), Some(TOKEN)),
            b.api("POST", "/api/v1/switch", Some(&body), Some(TOKEN)),
        );
        let changed: Vec<bool> = [&ra, &rb]
            .iter()
            .filter(|(st, _)| *st == 200)
            .map(|(_, v)| v["changed"] == true)
            .collect();
        // Exactly one switch happened: one changed it; the other either
        // lost the race (told so) or found it done already.
        assert_eq!(changed.iter().filter(|c| **c).count(), 1, "{ra:?} {rb:?}");
        for (st, v) in [&ra, &rb] {
            if *st != 200 {
                assert_eq!(*st, 409, "{v}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("another node"),
                    "{v}"
                );
                conflicts += 1;
            }
        }
        wait_until(
            Duration::from_secs(5),
            "both nodes on the same side",
            || async { live_of(&a).await == to && live_of(&b).await == to },
        )
        .await;
        let s = a.status().await;
        assert_eq!(s["generation"], round + 1, "one generation per round: {s}");
    }
    eprintln!("{conflicts} of 6 rounds ended in a conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_a_switch_is_named_and_catches_up_when_back() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let more = "converge_timeout = \"1s\"\nlease_ttl = \"10s\"";
    let a = node(&ep, "/bluegreen/t3", "a", &blue, &green, more);
    let b = node(&ep, "/bluegreen/t3", "b", &blue, &green, more);
    let mut c = node(&ep, "/bluegreen/t3", "c", &blue, &green, more);
    for n in [&a, &b, &c] {
        n.wait_all_healthy().await;
    }
    wait_until(Duration::from_secs(5), "three nodes reported", || async {
        a.status().await["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;
    let c_state = c.state_dir.clone();
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    // Its lease still runs: the switch happens, names c as not applied,
    // and exits 5.
    let (code, out, err) = cli(&a, &["switch", "--to", "green"]).await;
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("NOT yet applied on c"), "{out}");
    assert_eq!(live_of(&b).await, "green");
    // Once the lease ends, c is gone from the list and switches converge.
    wait_until(Duration::from_secs(20), "c's lease expired", || async {
        let s = a.status().await;
        s["cluster"]["nodes"].as_array().unwrap().len() == 2
    })
    .await;
    // Back: c starts on the state as it is now (green), not as it left it.
    let c2 = RouterBuilder::new(&[&blue], &[&green])
        .etcd(&ep, "/bluegreen/t3", "c", more)
        .state_dir(&c_state)
        .start();
    assert_eq!(live_of(&c2).await, "green");
    let (_, body) = get(&h1_client(), &c2.url("/")).await.unwrap();
    assert_eq!(body, "green");
    wait_nodes(&b, 3).await;
    let (code, out, err) = cli(&b, &["switch", "--to", "blue"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied on all 3 nodes"), "{out}");
    assert_eq!(live_of(&c2).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_lost_every_node_serves_and_refuses_then_catches_up_with_what_changed() {
    // Three members; the routers reach only the first. Losing it cuts the
    // routers off while the cluster keeps a quorum, so the operator can
    // switch through another member meanwhile (and compact the history
    // the routers' watches would resume from).
    let mut members = EtcdServer::cluster(3);
    let ep = [members[0].client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let a = RouterBuilder::new(&[&blue], &[&green])
        .etcd(&ep, "/bluegreen/t4", "a", "")
        .extra(&deploy_toml("1s"))
        .start();
    let b = node(&ep, "/bluegreen/t4", "b", &blue, &green, "");
    a.wait_all_healthy().await;
    b.wait_all_healthy().await;
    members[0].kill();
    wait_until(
        Duration::from_secs(10),
        "both nodes know etcd is gone",
        || async {
            a.status().await["cluster"]["connected"] == false
                && b.status().await["cluster"]["connected"] == false
        },
    )
    .await;
    // Serving the last applied state, whole requests.
    let load = Load::start(&[&a, &b]);
    load.advance(20).await;
    // Switches are refused with the reason, and change nothing.
    let (code, out, err) = cli(&a, &["switch", "--to", "green"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("unreachable") && err.contains("last applied state"),
        "{err}"
    );
    let (st, v) = b
        .api(
            "POST",
            "/api/v1/switch",
            Some("{\"to\":\"green\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], "store_unreachable");
    // So is a deploy.
    let (st, v) = a
        .api(
            "POST",
            "/api/v1/deploys",
            Some("{\"version\":\"v9\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], "store_unreachable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refuses changes (switches, rollbacks, deploys)"),
        "{v}"
    );
    let (_, text, _) = cli(&a, &["status"]).await;
    assert!(
        text.contains("UNREACHABLE") && text.contains("fail static"),
        "{text}"
    );
    // The event and the metric say so too.
    let (_, metrics) = a.api("GET", "/metrics", None, Some(TOKEN)).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("bluegreen_cluster_connected 0"),
        "{metrics}"
    );
    // The operator switches through a member that is still up, writing the
    // state as a node would, then compacts.
    let operator =
        bluegreen_store::EtcdStore::open(&etcd_config(&members[1].client_url, "/bluegreen/t4"));
    let operator = operator.expect("operator's store");
    tokio::task::spawn_blocking(move || {
        use bluegreen_store::StateStore;
        let mut s = bluegreen_store::load_router(&operator).unwrap().unwrap();
        let req = bluegreen_core::state::SwitchRequest {
            to: bluegreen_core::Side::Green,
            kind: bluegreen_core::state::SwitchKind::Switch,
            forced: false,
            actor: "operator".into(),
            reason: "etcd down on the routers' member".into(),
        };
        s = s.switched(&req, "2026-12-01T00:00:00Z".into(), 1).unwrap();
        bluegreen_store::save_router(&operator, &s).unwrap();
        for i in 0..20 {
            operator.put(&format!("noise/{i}"), b"x").unwrap();
        }
        operator.compact_now().unwrap();
    })
    .await
    .unwrap();
    let samples = load.finish().await;
    assert!(
        samples.iter().all(|s| side_of(s) == "blue"),
        "served the last applied state"
    );
    // The member comes back: both nodes resync and apply the operator's switch.
    members[0].restart();
    members[0].wait_healthy(Duration::from_secs(20));
    wait_until(
        Duration::from_secs(15),
        "both nodes applied the operator's switch",
        || async { live_of(&a).await == "green" && live_of(&b).await == "green" },
    )
    .await;
    let s = a.status().await;
    assert_eq!(s["cluster"]["connected"], true, "{s}");
    assert_eq!(s["last_switch"]["actor"], "operator");
    let (_, body) = get(&h1_client(), &b.url("/")).await.unwrap();
    assert_eq!(body, "green");
    assert!(a.stderr().contains("shared state store is back"));
}

pub(crate) fn etcd_config(endpoint: &str, prefix: &str) -> bluegreen_core::config::EtcdConfig {
    bluegreen_core::config::EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: prefix.to_string(),
        node: "operator".into(),
        username: None,
        password_env: None,
        tls: None,
        converge_timeout: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(5),
        forget_after: Duration::from_secs(3600),
        compact_every: None,
        keep_revisions: 1000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_a_compacted_revision_is_told_so() {
    let etcd = EtcdServer::start();
    let store =
        bluegreen_store::EtcdStore::open(&etcd_config(&etcd.client_url, "/bluegreen/t5")).unwrap();
    let client =
        bluegreen_store::etcd::client::Client::new(&etcd_config(&etcd.client_url, "/x")).unwrap();
    let compacted = tokio::task::spawn_blocking(move || {
        use bluegreen_store::StateStore;
        for i in 0..5 {
            store.put("state", format!("{i}").as_bytes()).unwrap();
        }
        store.compact_now().unwrap()
    })
    .await
    .unwrap();
    let mut watch = client.watch("/bluegreen/t5/", 1).await.unwrap();
    match watch.next().await.unwrap() {
        bluegreen_store::etcd::client::WatchMessage::Compacted(at) => assert_eq!(at, compacted),
        other => panic!("expected a compaction notice, got {other:?}"),
    }
}

/// A deploy through hooks that only log (the backends are already up).
fn deploy_toml(bake: &str) -> String {
    format!(
        "[deploy]\ndeploy_timeout = \"5s\"\nkeep_warm = \"0s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
         [deploy.bake]\nduration = \"{bake}\"\ninterval = \"200ms\"\nmin_requests = 10\nmax_error_rate = 0.05\non_inconclusive = \"accept\"\n"
    )
}

/// Nodes a and b with a deploy pipeline (hooks), healthy and listed.
async fn deploy_pair(
    ep: &[&str],
    prefix: &str,
    more: &str,
    blue: &Backend,
    green: &Backend,
) -> (RouterProc, RouterProc) {
    let start = |name: &str| {
        RouterBuilder::new(&[blue], &[green])
            .etcd(ep, prefix, name, more)
            .extra(&deploy_toml("300ms"))
            .start()
    };
    let (a, b) = (start("a"), start("b"));
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    (a, b)
}

/// Starts a deploy of v2 on `n` that waits at the manual gate.
async fn deploy_to_the_gate(n: &RouterProc) {
    n.start_deploy("{\"version\":\"v2\",\"manual_promote\":true}")
        .await;
    wait_until(
        Duration::from_secs(10),
        "the deploy waits at the gate",
        || async {
            n.current_deploy().await["steps"]
                .as_array()
                .is_some_and(|s| {
                    s.iter()
                        .any(|s| s["step"] == "gate" && s["state"] == "running")
                })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deploy_lock_moves_to_another_node_when_its_holder_dies_and_the_deploy_resumes() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let more = "lease_ttl = \"2s\"";
    let (mut a, b) = deploy_pair(&ep, "/bluegreen/t6", more, &blue, &green).await;
    // A deploy on a, waiting at the manual gate.
    deploy_to_the_gate(&a).await;
    // b sees it, holds no lock, and says where the deploy runs.
    wait_until(
        Duration::from_secs(5),
        "b follows the shared book",
        || async { b.current_deploy().await["version"] == "v2" },
    )
    .await;
    let (st, v) = b
        .api(
            "POST",
            "/api/v1/deploys",
            Some("{\"version\":\"v3\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("node a"),
        "{v}"
    );
    let (st, v) = b.api("POST", "/api/v1/promote", None, Some(TOKEN)).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "deploy_elsewhere", "{v}");
    // Nor may b switch by hand while a's deploy owns the switch.
    let (st, v) = b
        .api(
            "POST",
            "/api/v1/switch",
            Some("{\"to\":\"green\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("node a"),
        "{v}"
    );
    assert_eq!(live_of(&a).await, "blue");
    assert_eq!(b.status().await["cluster"]["deploy_lock"], "a");
    // a dies; once its lease ends, b takes the lock and resumes at the gate.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_until(
        Duration::from_secs(10),
        "b holds the deploy lock",
        || async { b.status().await["cluster"]["deploy_lock"] == "b" },
    )
    .await;
    wait_until(Duration::from_secs(10), "b waits at the gate", || async {
        b.api("POST", "/api/v1/promote", None, Some(TOKEN)).await.0 == 200
    })
    .await;
    wait_until(
        Duration::from_secs(15),
        "the deploy finished on b",
        || async { b.current_deploy().await["outcome"] == "succeeded" },
    )
    .await;
    assert_eq!(live_of(&b).await, "green");
    assert!(
        b.stderr().contains("left by a node that is gone"),
        "{}",
        b.stderr()
    );
    // The takeover is in the deploy's own record, not only b's log.
    let d = b.current_deploy().await;
    assert!(
        d["log"]
            .to_string()
            .contains("node b took the deploy over at"),
        "{d}"
    );
    // Done: the lock is free again.
    wait_until(Duration::from_secs(5), "the lock is released", || async {
        b.status().await["cluster"]["deploy_lock"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bake_judges_the_whole_cluster_and_rolls_back_on_errors_seen_by_one_node() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let start = |name: &str| {
        RouterBuilder::new(&[&blue], &[&green])
            .etcd(&ep, "/bluegreen/t7", name, "")
            .extra(&deploy_toml("6s"))
            .start()
    };
    let a = start("a");
    let b = start("b");
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    // a sees only good traffic; b's clients hit a path the new version
    // breaks. The deploy runs on a.
    let (good_url, bad_url) = (a.url("/ok"), b.url("/fail"));
    let good = Traffic::start(move |_| good_url.clone());
    let bad = Traffic::start(move |_| bad_url.clone());
    a.start_deploy("{\"version\":\"v2\"}").await;
    a.wait_deploy_end(Duration::from_secs(20)).await;
    good.stop().await;
    bad.stop().await;
    let d = a.current_deploy().await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert!(d["reason"].to_string().contains("error"), "{d}");
    // a itself answered no error on green: the breach came from b.
    let (_, metrics) = a.api("GET", "/metrics", None, Some(TOKEN)).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let green_5xx = metrics
        .lines()
        .filter(|l| {
            l.starts_with("bluegreen_requests_total{")
                && l.contains("side=\"green\"")
                && l.contains("class=\"5xx\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(green_5xx, 0.0, "{metrics}");
    assert!(metrics.contains("side=\"green\""), "{metrics}");
    assert_eq!(a.status().await["live"], "blue");
    assert_eq!(live_of(&b).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_or_preview_cookie_from_one_node_is_honoured_by_the_others() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let start = |name: &str| {
        RouterBuilder::new(&[&blue], &[&green])
            .etcd(&ep, "/bluegreen/t8", name, "")
            .extra("\n[sessions]\nwindow = \"1m\"\n")
            .start()
    };
    let a = start("a");
    let b = start("b");
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    // A preview link made on a opens the idle side through b.
    let (code, out, err) = a.cli(&["preview-link", "--for", "10m"]);
    assert_eq!(code, 0, "{out}{err}");
    let path = out.lines().next().unwrap();
    let path = &path[path.find("/.bluegreen/preview").unwrap()..];
    let (_, landing) = curl(&["-i", &b.url(path)]);
    assert!(landing.starts_with("HTTP/1.1 303"), "{landing}");
    let preview = landing
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap().to_string())
        .expect("a preview cookie");
    let (_, body) = curl(&["-H", &format!("cookie: {preview}"), &a.url("/")]);
    assert_eq!(body, "green", "b's preview cookie verified on a");
    // A session begun on a stays on blue through b after a switch made on b.
    let (_, first) = curl(&["-i", &a.url("/")]);
    let session = first
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap().to_string())
        .expect("a session cookie");
    let (code, out, err) = cli(&b, &["switch", "--to", "green"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, kept) = curl(&["-H", &format!("cookie: {session}"), &b.url("/")]);
    assert_eq!(kept, "blue", "a's session cookie verified on b");
    let (_, fresh) = curl(&[&b.url("/")]);
    assert_eq!(fresh, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_on_an_empty_prefix_all_start_on_one_state() {
    let etcd = EtcdServer::start();
    let ep = etcd.client_url.clone();
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let (b, g) = (blue.addr, green.addr);
    let nodes: Vec<RouterProc> = (0..3)
        .map(|i| {
            let ep = ep.clone();
            std::thread::spawn(move || {
                RouterBuilder::addrs(vec![b], vec![g])
                    .etcd(&[&ep], "/bluegreen/t9", &format!("n{i}"), "")
                    .start()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("every node started"))
        .collect();
    for n in &nodes {
        wait_nodes(n, 3).await;
        assert_eq!(n.status().await["generation"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_held_through_an_etcd_restart_stays_with_its_node_and_the_deploy_runs_once() {
    let mut etcd = EtcdServer::start();
    let ep = [etcd.client_url.clone()];
    let ep: Vec<&str> = ep.iter().map(String::as_str).collect();
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let (a, b) = deploy_pair(&ep, "/bluegreen/t10", "lease_ttl = \"10s\"", &blue, &green).await;
    deploy_to_the_gate(&a).await;
    // etcd goes away and comes back well within the lease: both nodes
    // start new sessions; a carries its lock over to its new lease.
    etcd.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.status().await["cluster"]["connected"] != false {
        assert!(
            Instant::now() < deadline,
            "a did not notice etcd was gone; its log:\n{}",
            a.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    etcd.restart();
    etcd.wait_healthy(Duration::from_secs(20));
    wait_until(Duration::from_secs(15), "both nodes back", || async {
        a.status().await["cluster"]["connected"] == true
            && b.status().await["cluster"]["connected"] == true
    })
    .await;
    assert_eq!(b.status().await["cluster"]["deploy_lock"], "a");
    let (st, v) = a.api("POST", "/api/v1/promote", None, Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    wait_until(
        Duration::from_secs(15),
        "the deploy finished on a",
        || async { a.current_deploy().await["outcome"] == "succeeded" },
    )
    .await;
    // b never ran it.
    assert!(
        !b.stderr().contains("left by a node that is gone"),
        "{}",
        b.stderr()
    );
    wait_until(
        Duration::from_secs(5),
        "b follows the finished deploy",
        || async { b.current_deploy().await["outcome"] == "succeeded" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shadow_gate_judges_the_traffic_of_every_node() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let shadow = "[deploy.shadow]\nduration = \"20s\"\nrequests = 40\nmin_requests = 20\nmax_diff_rate = 0.05\n\
                  [shadow]\nignore_paths = [\"/request_id\", \"/ts\"]\n";
    let start = |name: &str| {
        RouterBuilder::new(&[&blue], &[&green])
            .etcd(&ep, "/bluegreen/t11", name, "")
            .extra(&format!("{}{shadow}", deploy_toml("300ms")))
            .start()
    };
    let (a, b) = (start("a"), start("b"));
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    // Live traffic reaches b only; the new version (green) changes a price.
    let url = b.url("");
    let load = Traffic::start(move |i| format!("{url}/shadow/users/{}", i % 50));
    a.start_deploy("{\"version\":\"v2\"}").await;
    a.wait_deploy_end(Duration::from_secs(40)).await;
    let statuses = load.stop().await;
    assert!(statuses.iter().all(|&s| s == 200), "live traffic failed");
    let d = a.current_deploy().await;
    assert_eq!(d["outcome"], "failed", "{d}");
    let reason = d["reason"].to_string();
    // a saw no traffic at all: the differences are b's, judged on a.
    assert!(reason.contains("/shadow/users/"), "{d}");
    assert!(reason.contains("/price (live 10, idle 12)"), "{d}");
    assert_eq!(a.status().await["live"], "blue");
    // b took part, and its part is over.
    wait_until(
        Duration::from_secs(5),
        "b's part of the run stopped",
        || async {
            b.status().await["cluster"]["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 2)
                && b.api("GET", "/api/v1/shadow", None, Some(TOKEN)).await.1["shadow"]["running"]
                    == false
        },
    )
    .await;
}

/// A rollback that re-deploys (the old side was stopped) hands the deploy
/// lock to the re-deploy it starts and never deletes it afterwards: the
/// re-deploy runs to the end on its node, and no deploy on a cluster
/// reports a lost lock when it simply finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_that_redeploys_keeps_the_new_deploys_lock() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let start = |name: &str| {
        let toml = deploy_toml("300ms").replace(
            "deploy = \"true\"\n",
            "deploy = \"true\"\ndecommission = \"true\"\n",
        );
        RouterBuilder::new(&[&blue], &[&green])
            .etcd(&ep, "/bluegreen/t9", name, "")
            .extra(&toml)
            .start()
    };
    let (a, b) = (start("a"), start("b"));
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    for v in ["v1", "v2"] {
        a.start_deploy(&format!("{{\"version\":\"{v}\"}}")).await;
        let d = a.wait_deploy_end(Duration::from_secs(20)).await;
        assert_eq!(d["outcome"], "succeeded", "{d}");
        wait_until(Duration::from_secs(5), "the lock is released", || async {
            a.status().await["cluster"]["deploy_lock"].is_null()
        })
        .await;
    }
    // keep_warm = 0: v1's side was stopped, so the rollback re-deploys v1.
    let (st, v) = a
        .api(
            "POST",
            "/api/v1/rollback",
            Some("{\"reason\":\"v2 is bad\"}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let id = v["redeploy"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("a re-deploy: {v}"));
    let d = a.wait_deploy_end(Duration::from_secs(20)).await;
    assert_eq!(d["id"].as_u64(), Some(id), "{d}");
    assert_eq!(d["version"], "v1", "{d}");
    assert_eq!(d["outcome"], "succeeded", "{d}");
    wait_until(Duration::from_secs(5), "b follows", || async {
        live_of(&b).await == live_of(&a).await
    })
    .await;
    wait_until(Duration::from_secs(5), "the lock is released", || async {
        a.status().await["cluster"]["deploy_lock"].is_null()
    })
    .await;
    let err = a.stderr();
    assert!(!err.contains("lost the deploy lock"), "{err}");
}

/// With a deploy pipeline on every node, the loser of two concurrent
/// switches is told of a conflict (409 `conflict`, "another node"), not
/// that "deploys run there" when no deploy ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_loser_of_concurrent_switches_with_a_pipeline_gets_a_plain_conflict() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let (a, b) = deploy_pair(&ep, "/bluegreen/t10", "", &blue, &green).await;
    let mut lost = 0;
    for round in 0..6 {
        let to = if round % 2 == 0 { "green" } else { "blue" };
        let body = format!("{{\"to\":\"{to}\",\"reason\":\"round {round}\"}}");
        let (ra, rb) = tokio::join!(
            a.api("POST", "/api/v1/switch", Some(&body), Some(TOKEN)),
            b.api("POST", "/api/v1/switch", Some(&body), Some(TOKEN)),
        );
        for (st, v) in [&ra, &rb] {
            if *st != 200 {
                assert_eq!(*st, 409, "{v}");
                assert_eq!(v["error"]["code"], "conflict", "{v}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains("another node"), "{v}");
                assert!(!msg.contains("deploys run there"), "{v}");
                lost += 1;
            }
        }
        wait_until(Duration::from_secs(5), "both on the same side", || async {
            live_of(&a).await == to && live_of(&b).await == to
        })
        .await;
    }
    eprintln!("{lost} of 6 rounds had a loser");
}

/// The node running a deploy dies late in the bake while the new version
/// starts failing on another node's traffic. The node that takes the lock
/// judges the whole bake (its start is in the record, every node reported
/// its traffic meanwhile): it rolls back, the old side is kept, and the
/// record says who took over. Before, it judged only what came after the
/// takeover (0 requests), passed, and stopped the good old side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_lost_late_in_the_bake_never_lets_a_failing_release_through() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let start = |name: &str| {
        RouterBuilder::new(&[&blue], &[&green])
            .etcd(&ep, "/bluegreen/t11", name, "lease_ttl = \"2s\"")
            .extra(&deploy_toml("3s").replace("keep_warm = \"0s\"", "keep_warm = \"1m\""))
            .start()
    };
    let (mut a, b) = (start("a"), start("b"));
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    // Good traffic through b while the deploy runs on a.
    let fail = Arc::new(AtomicBool::new(false));
    let (base, f) = (b.url(""), fail.clone());
    let traffic = Traffic::start(move |_| {
        let path = if f.load(Ordering::SeqCst) {
            "/fail"
        } else {
            "/ok"
        };
        format!("{base}{path}")
    });
    a.start_deploy("{\"version\":\"v2\"}").await;
    wait_until(Duration::from_secs(15), "a bakes v2", || async {
        a.current_deploy().await["steps"]
            .as_array()
            .is_some_and(|s| {
                s.iter()
                    .any(|s| s["step"] == "bake" && s["state"] == "running")
            })
    })
    .await;
    // Late in the bake (the scenario's timing, not a synchronisation): a
    // dies, and at that moment the new version starts failing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.child.kill().unwrap();
    fail.store(true, Ordering::SeqCst);
    a.child.wait().unwrap();
    let d = b.wait_deploy_end(Duration::from_secs(30)).await;
    traffic.stop().await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(live_of(&b).await, "blue");
    assert!(
        d["log"].to_string().contains("node b took the deploy over"),
        "{d}"
    );
    // The old side was kept: it serves.
    let (code, body) = curl(&[&b.url("/ok")]);
    assert_eq!((code, body.as_str()), (0, "blue"));
}

/// A node frozen past its lease misses a switch (it is no longer listed, so
/// the switch goes on without it). When it wakes it never answers with the
/// side from before the switch: it checks the shared state first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_wakes_after_missing_a_switch_never_serves_the_old_side() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let more = "lease_ttl = \"2s\"\nconverge_timeout = \"1s\"";
    let a = node(&ep, "/bluegreen/t12", "a", &blue, &green, more);
    let b = node(&ep, "/bluegreen/t12", "b", &blue, &green, more);
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    let (code, body) = curl(&[&b.url("/")]);
    assert_eq!((code, body.as_str()), (0, "blue"));
    let pid = b.child.id().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    wait_until(Duration::from_secs(15), "b's lease ended", || async {
        a.status().await["cluster"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1)
    })
    .await;
    a.switch_to("green").await;
    // Requests sent while b is still frozen wait in its socket buffers and
    // are the first thing it sees when it wakes.
    let mut waiting = Vec::new();
    for i in 0..5 {
        let mut c = crate::raw::RawClient::connect(b.proxy).await;
        c.send(format!("GET /woke/{i} HTTP/1.1\r\nhost: app.test\r\n\r\n").as_bytes())
            .await;
        waiting.push(c);
    }
    signal("-CONT");
    for mut c in waiting {
        let r = c.response(false).await.expect("an answer");
        assert_eq!(
            (r.status, r.text()),
            (200, "green".to_string()),
            "{}",
            b.stderr()
        );
    }
    let (code, body) = curl(&[&b.url("/")]);
    assert_eq!((code, body.as_str()), (0, "green"));
}

/// A node that goes away stays listed as LOST (with when it was last seen)
/// instead of vanishing with its lease; switches count it as not applied;
/// an operator forgets it once it is gone for good (a live node cannot be).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_stays_listed_until_it_is_forgotten() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let more = "lease_ttl = \"2s\"\nconverge_timeout = \"1s\"";
    let a = node(&ep, "/bluegreen/t13", "a", &blue, &green, more);
    let mut b = node(&ep, "/bluegreen/t13", "b", &blue, &green, more);
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_nodes(n, 2).await;
    }
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    wait_until(Duration::from_secs(15), "b listed as LOST", || async {
        a.status().await["cluster"]["lost"]
            .as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["node"] == "b")
    })
    .await;
    let (code, text, _) = cli(&a, &["status"]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("LOST") && text.contains("last seen"),
        "{text}"
    );
    let v = a.switch_to("green").await;
    let stale = v["converged"]["stale"].to_string();
    assert!(stale.contains("b (LOST)"), "{v}");
    // A live node cannot be forgotten; the lost one can.
    let (code, _, err) = cli(&a, &["cluster-forget", "a"]).await;
    assert_ne!(code, 0, "{err}");
    let (code, out, err) = cli(&a, &["cluster-forget", "b"]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_until(Duration::from_secs(5), "b forgotten", || async {
        a.status().await["cluster"]["lost"]
            .as_array()
            .is_some_and(|l| l.is_empty())
    })
    .await;
}

/// A node that hands over to a new process (an upgrade) keeps answering
/// the keep-alive clients it still holds through its drain, without
/// stalling them: its heartbeat stops with it, so every later request
/// finds the old process "in doubt" of the shared state, and the check it
/// asks for must still run (it did not, once: each such request waited out
/// `converge_timeout` and a second).
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_node_answers_its_keep_alive_clients_without_a_stall() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let a = RouterBuilder::new(&[&blue], &[&green])
        .etcd(&ep, "/bluegreen/t-drain", "a", "converge_timeout = \"8s\"")
        .drain("12s")
        .start();
    a.wait_all_healthy().await;
    let mut c = crate::raw::RawClient::connect(a.proxy).await;
    c.send(b"GET /before HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await;
    let r = c.response(false).await.expect("an answer");
    assert_eq!((r.status, r.text()), (200, "blue".to_string()));

    let successors = crate::upgrade::Successors::default();
    let (code, out, err) = successors.upgrade(&a, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // The client thinks for a while: longer than the one-second gap that
    // puts a node in doubt, shorter than the drain that keeps its
    // connection (to the old process) open.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for i in 0..3 {
        let started = Instant::now();
        c.send(format!("GET /during-drain/{i} HTTP/1.1\r\nhost: app.test\r\n\r\n").as_bytes())
            .await;
        let r = c
            .response(false)
            .await
            .expect("an answer from the draining process");
        let took = started.elapsed();
        assert_eq!((r.status, r.text()), (200, "blue".to_string()));
        assert!(
            took < Duration::from_secs(4),
            "request {i} waited {took:?} (a stall waits converge_timeout + 1 s = 9 s)"
        );
        if r.header("connection") == Some("close") {
            break;
        }
    }
}
