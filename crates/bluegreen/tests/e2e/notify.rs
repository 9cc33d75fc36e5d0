//! `[[notify]]` against a real HTTP receiver started by the test (it
//! records every delivery attempt, and can refuse connections or answer
//! 500): every notice of a deploy and a rollback arrives once, in order,
//! signed, after the receiver was down; a notice waiting in the outbox when
//! bluegreen is killed with SIGKILL is delivered by the next process. The
//! gate's approval webhook: not yet, then yes; a refusal; no answer in time.

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
struct Delivery {
    headers: std::collections::BTreeMap<String, String>,
    body: String,
    answered: u16,
}

impl Delivery {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// A receiver: answers with `reply` (200 "noted" at first); records
/// everything.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Delivery>>>,
    reply: Arc<Mutex<(u16, String)>>,
    stop: CancellationToken,
}

impl Receiver {
    async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
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
    fn accepted(&self) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.answered == 200)
            .cloned()
            .collect()
    }

    fn kinds(&self) -> Vec<String> {
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

const SECRET: &str = "s3cret-for-the-test";

/// The check the guide gives receivers, run with openssl.
fn signature_ok(d: &Delivery) -> bool {
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
    let receiver = Receiver::start_on(closed_port()).await;
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
    let receiver = Receiver::start_on(closed_port()).await;
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
    let good = Receiver::start_on(closed_port()).await;
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
