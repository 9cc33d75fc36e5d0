//! `[[notify]]` against a real HTTP receiver started by the test (it
//! records every delivery attempt, and can refuse connections or answer
//! 500): every notice of a deploy and a rollback arrives once, in order,
//! signed, after the receiver was down; a notice waiting in the outbox when
//! bluegreen is killed with SIGKILL is delivered by the next process. The
//! gate's approval webhook: not yet, then yes; a refusal; no answer in time.
//! Three nodes on etcd: each notice delivered once, by one node, and by
//! another when that node is killed.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One delivery attempt as it arrived, and what the receiver answered.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) headers: std::collections::BTreeMap<String, String>,
    pub(crate) body: String,
    answered: u16,
}

impl Delivery {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// A receiver: answers with `reply` (200 "noted" at first); records
/// everything.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Delivery>>>,
    reply: Arc<Mutex<(u16, String)>>,
    stop: CancellationToken,
}

impl Receiver {
    /// On a port of its own.
    pub(crate) async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// On `addr` (a port the router was told of before anything listened).
    async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            addr,
            seen: Arc::default(),
            reply: Arc::new(Mutex::new((200, "noted".into()))),
            stop: CancellationToken::new(),
        };
        let (seen, reply, stop) = (r.seen.clone(), r.reply.clone(), r.stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                };
                let (seen, reply) = (seen.clone(), reply.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, reply) = (seen.clone(), reply.clone());
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), v.to_str().unwrap_or("?").to_string())
                                })
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let (answered, text) = reply.lock().unwrap().clone();
                            seen.lock().unwrap().push(Delivery {
                                headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                answered,
                            });
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(answered)
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        r
    }

    fn set(&self, status: u16, body: &str) {
        *self.reply.lock().unwrap() = (status, body.to_string());
    }

    /// The accepted deliveries (2xx), in the order they arrived.
    pub(crate) fn accepted(&self) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.answered == 200)
            .cloned()
            .collect()
    }

    pub(crate) fn kinds(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|d| d.json()["data"]["kind"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) const SECRET: &str = "s3cret-for-the-test";

/// The check the guide gives receivers, run with openssl.
pub(crate) fn signature_ok(d: &Delivery) -> bool {
    let ts = &d.headers["x-bluegreen-timestamp"];
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", SECRET])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{ts}.{}", d.body).as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().rsplit(' ').next().unwrap_or("");
    d.headers["x-bluegreen-signature"] == format!("sha256={hex}")
}

fn notify_toml(url: &str) -> String {
    format!(
        "[[notify]]\nname = \"ops\"\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\"\ntimeout = \"10s\"\n\
         events = [\"deploy_started\", \"deploy_succeeded\", \"deploy_rolled_back\", \"deploy_failed\", \"switched\", \"rolled_back\"]\n"
    )
}

async fn metric(router: &RouterProc, name: &str) -> f64 {
    let (_, body) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
    let text = body.as_str().unwrap_or("").to_string();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{hook=\"ops\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_notice_of_a_deploy_and_a_rollback_arrives_once_in_order_signed() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // The receiver is down at first: nothing listens on its port.
    let addr = closed_port();
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1")
        .env("HOOK_SECRET", SECRET)
        .extra(&format!(
            "[deploy]\ndeploy_timeout = \"5s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"200ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n\n{}",
            notify_toml(&format!("http://{addr}/hooks/bluegreen?team=ops"))
        ))
        .start();
    router.wait_all_healthy().await;

    // Two releases, then a rollback to the first.
    for v in ["v1", "v2"] {
        let (code, out, err) = router.cli(&["deploy", v]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");

    // Waiting, and counted as failing, while the receiver is down.
    wait_until(
        Duration::from_secs(20),
        "attempts fail and notices wait",
        || async {
            metric(&router, "bluegreen_notify_failed_attempts_total").await >= 1.0
                && metric(&router, "bluegreen_notify_pending").await >= 7.0
        },
    )
    .await;
    // `status` says the hook fails, with what it waits for and why.
    let st = router.status().await;
    assert_eq!(st["notify"][0]["hook"], "ops", "{st}");
    assert_eq!(st["notify"][0]["pending"], 7, "{st}");
    assert!(
        st["notify"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("onnection refused"),
        "{st}"
    );
    let (code, out, err) = router.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NOTIFY: hook ops is failing: 7 notices waiting"),
        "{out}"
    );

    // Up: everything arrives.
    let receiver = Receiver::start_on(addr).await;
    // Up to two minutes: the head's next attempt may be a minute away
    // (its backoff grew while the receiver was down).
    wait_until(
        Duration::from_secs(120),
        "every notice delivered",
        || async { receiver.kinds().contains(&"rolled_back".to_string()) },
    )
    .await;
    wait_until(Duration::from_secs(10), "nothing waits", || async {
        metric(&router, "bluegreen_notify_pending").await == 0.0
    })
    .await;
    assert!(
        router.status().await.get("notify").is_none(),
        "no failing hook once delivered"
    );
    assert_eq!(
        receiver.kinds(),
        [
            "deploy_started",
            "switched",
            "deploy_succeeded",
            "deploy_started",
            "switched",
            "deploy_succeeded",
            "rolled_back"
        ],
        "in the order they happened"
    );
    let accepted = receiver.accepted();
    let ids: std::collections::BTreeSet<String> = accepted
        .iter()
        .map(|d| d.headers["x-bluegreen-delivery"].clone())
        .collect();
    assert_eq!(ids.len(), accepted.len(), "each notice once");
    for d in &accepted {
        let v = d.json();
        assert_eq!(v["specversion"], "1.0", "{}", d.body);
        assert_eq!(
            v["id"].as_str(),
            Some(d.headers["x-bluegreen-delivery"].as_str())
        );
        assert_eq!(d.headers["content-type"], "application/cloudevents+json");
        assert!(signature_ok(d), "signature of {}", d.body);
    }
    let succeeded = accepted[2].json();
    assert_eq!(succeeded["subject"], "deploy #1");
    assert_eq!(succeeded["data"]["facts"]["version"], "v1");
    assert_eq!(succeeded["data"]["facts"]["target"], "green");
    let rolled = accepted[6].json();
    assert_eq!(rolled["data"]["facts"]["to"], "green");
    assert!(
        metric(&router, "bluegreen_notify_delivered_total").await >= 7.0,
        "delivered counted"
    );

    // `notify test` reaches the hook and prints its answer.
    let (code, out, err) = router.cli(&["notify", "test", "ops"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ops answered 200: noted"), "{out}");
    let (code, _, err) = router.cli(&["notify", "test", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no [[notify]] entry named \"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_waiting_when_bluegreen_is_killed_is_delivered_by_the_next_process() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let receiver = Receiver::start().await;
    receiver.set(500, "down for maintenance");
    let url = format!("http://{}/in", receiver.addr);
    let state = tempfile::tempdir().unwrap();
    let builder = || {
        RouterBuilder::new(&[&blue], &[&green])
            .health("interval = \"100ms\"\nhealthy_threshold = 1")
            .state_dir(state.path())
            .env("HOOK_SECRET", SECRET)
            .extra(&notify_toml(&url))
    };
    let mut router = builder().start();
    router.wait_all_healthy().await;
    router.switch_to("green").await;
    // The receiver answered 500 at least once: the notice waits.
    wait_until(Duration::from_secs(20), "a failed attempt", || async {
        !receiver.seen.lock().unwrap().is_empty()
    })
    .await;
    let id = receiver.seen.lock().unwrap()[0].headers["x-bluegreen-delivery"].clone();
    router.child.kill().unwrap(); // SIGKILL
    let _ = router.child.wait();
    drop(router);

    receiver.set(200, "noted");
    let router = builder().start();
    wait_until(
        Duration::from_secs(20),
        "delivered after the restart",
        || async { !receiver.accepted().is_empty() },
    )
    .await;
    let accepted = receiver.accepted();
    assert_eq!(
        accepted[0].headers["x-bluegreen-delivery"], id,
        "the same notice, the same id"
    );
    assert_eq!(accepted[0].json()["data"]["kind"], "switched");
    assert!(signature_ok(&accepted[0]));
    assert_eq!(router.status().await["live"], "green");
}

/// `[deploy.gate] webhook`: asked until it says 200 (promote), 403 aborts
/// with its body as the reason, and nothing in time aborts too; the live
/// side never moves without a yes.
#[tokio::test(flavor = "multi_thread")]
async fn the_approval_webhook_promotes_refuses_or_times_out() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let receiver = Receiver::start().await;
    receiver.set(202, "the change board meets at noon");
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1")
        .env("HOOK_SECRET", SECRET)
        .extra(&format!(
            "[deploy]\ndeploy_timeout = \"5s\"\npromote_timeout = \"4s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"200ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n\
             [deploy.gate]\nwebhook = \"http://{}/approve?app=shop\"\nsecret_env = \"HOOK_SECRET\"\ninterval = \"100ms\"\n",
            receiver.addr
        ))
        .start();
    router.wait_all_healthy().await;

    // Not yet, then yes: promoted, and the question was the release's.
    let r = receiver.reply.clone();
    let seen = receiver.seen.clone();
    let approve = tokio::spawn(async move {
        wait_until(Duration::from_secs(20), "asked twice", || async {
            seen.lock().unwrap().len() >= 2
        })
        .await;
        *r.lock().unwrap() = (200, "approved by the change board".into());
    });
    let (code, out, err) = router.cli(&["deploy", "v1"]);
    approve.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("approved by http://"),
        "{out}{err}"
    );
    assert_eq!(router.status().await["live"], "green");
    let asked = receiver.seen.lock().unwrap().clone();
    assert!(asked.len() >= 3);
    for d in &asked {
        assert_eq!(d.json()["version"], "v1", "{}", d.body);
        assert_eq!(d.json()["target"], "green");
        assert_eq!(d.headers["x-bluegreen-event"], "approval");
        assert!(signature_ok(d), "{}", d.body);
    }

    // A refusal aborts, with the receiver's words; nothing switches.
    receiver.set(403, "change freeze until Monday");
    let (code, out, err) = router.cli(&["deploy", "v2"]);
    assert_eq!(code, 4, "aborted: {out}{err}");
    assert!(
        format!("{out}{err}").contains("change freeze until Monday"),
        "{out}{err}"
    );
    assert_eq!(router.status().await["live"], "green");

    // Only "later" until promote_timeout: aborted, nothing switches.
    receiver.set(503, "busy");
    let (code, out, err) = router.cli(&["deploy", "v3"]);
    assert_eq!(code, 4, "aborted: {out}{err}");
    assert!(
        format!("{out}{err}").contains("no approval from"),
        "{out}{err}"
    );
    assert_eq!(router.status().await["live"], "green");
}

/// A hook whose receiver takes connections and never answers holds up
/// only its own notices: the other hook gets every notice of a deploy
/// while the stalled one still waits, and the deploy is not held up.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_receiver_holds_up_no_other_hook_and_no_deploy() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let good = Receiver::start().await;
    // Accepts, reads nothing, answers nothing.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = stalled.accept().await {
            conns.push(s);
        }
    });
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1")
        .extra(&format!(
            "[deploy]\ndeploy_timeout = \"5s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"200ms\"\ninterval = \"100ms\"\non_inconclusive = \"accept\"\n\n\
             [[notify]]\nname = \"stalled\"\nurl = \"http://{stalled_addr}/\"\ntimeout = \"60s\"\n\
             [[notify]]\nname = \"ops\"\nurl = \"http://{}/\"\n",
            good.addr
        ))
        .start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(
        Duration::from_secs(30),
        "the other hook has every notice",
        || async { good.kinds() == ["deploy_started", "switched", "deploy_succeeded"] },
    )
    .await;
    // Live requests while the stalled hook holds an attempt open: each
    // arrives whole and none waits on the hook (its attempt may take 60 s).
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut slowest = Duration::ZERO;
    let mut took = Vec::new();
    for i in 0..200u32 {
        let body = format!("order-{i}-{}", "y".repeat((i % 5) as usize));
        let req = http::Request::builder()
            .method(if i % 2 == 0 { "POST" } else { "PUT" })
            .uri(router.url(&format!("/echo?q={i}&item=%2Fa%2F{i}")))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let t = std::time::Instant::now();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        let e = t.elapsed();
        took.push(e);
        slowest = slowest.max(e);
        assert_eq!(String::from_utf8_lossy(&got), format!("green:{body}"));
    }
    took.sort();
    eprintln!(
        "live requests while a hook stalls: p50 {:?}, p99 {:?}, max {slowest:?} (200 requests)",
        took[100], took[198]
    );
    // The hook's attempt is open for up to 60 s: a request that waited on
    // it would take seconds; the bound is far from both.
    assert!(slowest < Duration::from_secs(5), "slowest {slowest:?}");
    let (_, body) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
    let text = body.as_str().unwrap_or("").to_string();
    assert!(
        text.contains("bluegreen_notify_pending{hook=\"stalled\"} 3"),
        "the stalled hook still waits: {text}"
    );
    assert!(
        text.contains("bluegreen_notify_delivered_total{hook=\"ops\"} 3"),
        "{text}"
    );
    held.abort();
}

/// Three nodes on one etcd with the same hook: what each node sees (a
/// switch, maintenance, a rollback, made through different nodes) arrives
/// once, sent by one node; that node killed while the receiver refuses,
/// another node takes the outbox over, delivers what waited, and says the
/// node was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_cluster_each_notice_is_delivered_once_by_one_node() {
    let etcd = bluegreen_store::etcd::testing::EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let receiver = Receiver::start().await;
    let hook = format!(
        "[[notify]]\nname = \"ops\"\nurl = \"http://{}/in\"\nsecret_env = \"HOOK_SECRET\"\n\
         events = [\"switched\", \"rolled_back\", \"maintenance_on\", \"maintenance_off\", \"node_lost\"]\n",
        receiver.addr
    );
    let mut nodes: Vec<RouterProc> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            RouterBuilder::new(&[&blue], &[&green])
                .health("interval = \"100ms\"\nhealthy_threshold = 1")
                .env("HOOK_SECRET", SECRET)
                .etcd(&ep, "/bluegreen/notify", n, "lease_ttl = \"2s\"")
                .extra(&hook)
                .start()
        })
        .collect();
    for n in &nodes {
        n.wait_all_healthy().await;
    }
    wait_until(Duration::from_secs(10), "every node reported", || async {
        nodes[0].status().await["cluster"]["nodes"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
    })
    .await;

    // Each change through another node. Maintenance does not wait for
    // every node: one that has not applied the last change yet answers
    // 409 `conflict` ("try again"), as documented.
    nodes[0].switch_to("green").await;
    for (n, path, body) in [
        (
            1,
            "/api/v1/maintenance",
            "{\"on\": true, \"message\": \"db upgrade\"}",
        ),
        (2, "/api/v1/maintenance", "{\"on\": false}"),
        (1, "/api/v1/rollback", "{}"),
    ] {
        let node = &nodes[n];
        wait_until(Duration::from_secs(10), path, || async {
            let (st, v) = node.api("POST", path, Some(body), Some(TOKEN)).await;
            assert!(
                st == 200 || (st == 409 && v["error"]["code"] == "conflict"),
                "{st} {v}"
            );
            st == 200
        })
        .await;
    }
    let expected = [
        "switched",
        "maintenance_on",
        "maintenance_off",
        "rolled_back",
    ];
    wait_until(Duration::from_secs(20), "four notices", || async {
        receiver.kinds().len() >= 4
    })
    .await;
    // Every node saw every change and wrote it to the shared inbox: once
    // the inbox in etcd is empty, everything was taken in (once).
    let etcd_client = bluegreen_store::etcd::client::Client::new(&crate::cluster::etcd_config(
        ep[0],
        "/bluegreen/notify",
    ))
    .unwrap();
    wait_until(Duration::from_secs(10), "the inbox is empty", || async {
        let inbox = etcd_client
            .range("/bluegreen/notify/notify-inbox/", true)
            .await
            .map(|(_, kvs)| kvs.len());
        let mut pending = 0.0;
        for n in &nodes {
            pending += metric(n, "bluegreen_notify_pending").await;
        }
        matches!(inbox, Ok(0)) && pending == 0.0
    })
    .await;
    assert_eq!(receiver.kinds(), expected, "once each, in order");
    let accepted = receiver.accepted();
    let sources: std::collections::BTreeSet<String> = accepted
        .iter()
        .map(|d| d.json()["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sources.len(), 1, "one node delivers: {sources:?}");
    for d in &accepted {
        assert!(signature_ok(d), "{}", d.body);
    }
    assert!(
        accepted[1].json()["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("db upgrade"),
        "{}",
        accepted[1].body
    );
    let deliverer = sources.into_iter().next().unwrap();
    let dead = ["a", "b", "c"]
        .iter()
        .position(|n| deliverer == format!("bluegreen/{n}"))
        .expect("a node's name");

    // The receiver refuses; a switch waits in the deliverer's outbox; the
    // deliverer is killed.
    receiver.set(500, "down");
    let other = (dead + 1) % 3;
    nodes[other].switch_to("green").await;
    wait_until(Duration::from_secs(20), "a refused attempt", || async {
        receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.answered == 500)
    })
    .await;
    nodes[dead].child.kill().unwrap(); // SIGKILL
    let _ = nodes[dead].child.wait();
    receiver.set(200, "noted");
    wait_until(
        Duration::from_secs(30),
        "the waiting switch and the lost node delivered by another node",
        || async {
            let k = receiver.kinds();
            k.iter().filter(|k| *k == "switched").count() == 2
                && k.contains(&"node_lost".to_string())
        },
    )
    .await;
    let accepted = receiver.accepted();
    let ids: std::collections::BTreeSet<String> = accepted
        .iter()
        .map(|d| d.headers["x-bluegreen-delivery"].clone())
        .collect();
    assert_eq!(
        ids.len(),
        accepted.len(),
        "nothing twice: {:?}",
        receiver.kinds()
    );
    // Every node saw each change of the first part too: none came twice
    // meanwhile.
    assert_eq!(
        receiver.kinds(),
        [&expected[..], &["switched", "node_lost"]].concat(),
        "the waiting one first"
    );
    let late: Vec<serde_json::Value> = accepted[4..].iter().map(|d| d.json()).collect();
    let lost = &late[1];
    assert_eq!(
        lost["data"]["facts"]["node"],
        ["a", "b", "c"][dead],
        "{lost}"
    );
    for v in &late {
        assert_ne!(v["source"], deliverer.as_str(), "{v}");
    }
}
