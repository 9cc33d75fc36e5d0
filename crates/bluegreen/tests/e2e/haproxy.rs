//! bluegreen driving the user's HAProxy (`router.kind = "haproxy"`): real
//! HAProxy from Debian in master-worker mode, started by the test with a
//! frontend that picks its backend from the map bluegreen writes. A switch
//! under keep-alive load: no error, and every request sent after the switch
//! returned answered by the new side; HAProxy reloaded by someone else
//! stays on it; a config someone else broke, backends that hold other
//! servers than the config's, or a HAProxy that is gone refuse the switch
//! and change nothing. The bake judges HAProxy's own counters.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// haproxy from Debian.
fn haproxy_bin() -> String {
    sbin("haproxy")
}

/// The user's HAProxy: a frontend on `listen` whose backend is the map's
/// `live` entry, `app_blue` and `app_green` with one server each.
struct Haproxy {
    conf: PathBuf,
    map: PathBuf,
    socket: PathBuf,
    listen: std::net::SocketAddr,
    child: Option<Child>,
}

impl Haproxy {
    fn new(dir: &Path, blue: std::net::SocketAddr, green: std::net::SocketAddr) -> Haproxy {
        let h = Haproxy {
            conf: dir.join("haproxy.cfg"),
            map: dir.join("bluegreen.map"),
            socket: dir.join("admin.sock"),
            listen: closed_port(),
            child: None,
        };
        h.write_conf("", blue, green);
        h
    }

    /// The config, with `more` in `global` (someone else's edit).
    fn write_conf(&self, more: &str, blue: std::net::SocketAddr, green: std::net::SocketAddr) {
        std::fs::write(
            &self.conf,
            format!(
                "global\n    stats socket {} mode 600 level admin\n{more}\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
                 frontend web\n    bind {}\n    use_backend %[str(live),map({},app_blue)]\n\
                 backend app_blue\n    server b1 {blue}\n\
                 backend app_green\n    server g1 {green}\n",
                self.socket.display(),
                self.listen,
                self.map.display(),
            ),
        )
        .unwrap();
    }

    async fn start(&mut self) {
        let child = Command::new(haproxy_bin())
            .args(["-W", "-db", "-f", self.conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (scripts/test installs it)");
        self.child = Some(child);
        let url = format!("http://{}/", self.listen);
        wait_until(Duration::from_secs(10), "haproxy answers", || async {
            get(&h1_client(), &url).await.is_ok()
        })
        .await;
        wait_until(
            Duration::from_secs(10),
            "its runtime API answers",
            || async { self.worker().await.is_some() },
        )
        .await;
    }

    /// The pid of the worker the runtime API is served by.
    async fn worker(&self) -> Option<u32> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await.ok()?;
        s.write_all(b"show info\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .and_then(|p| p.trim().parse().ok())
    }

    /// What an operator's `systemctl reload haproxy` does: SIGUSR2 to the
    /// master, which starts a new worker from the files on disk.
    async fn reload(&self) {
        let before = self.worker().await.expect("a worker before the reload");
        let master = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args(["-USR2", &master])
            .status()
            .unwrap()
            .success());
        wait_until(Duration::from_secs(10), "a new worker serves", || async {
            self.worker().await.is_some_and(|w| w != before)
        })
        .await;
    }

    /// SIGTERM to the master, which stops its workers too.
    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_gracefully(c);
        }
    }

    /// Fresh requests on varied paths: every one answered by `side`.
    async fn all_from(&self, side: &str) {
        for i in 0..20 {
            let path = match i % 3 {
                0 => "/".to_string(),
                1 => format!("/items/{i}?q=%20x&n={i}"),
                _ => format!("/a/b%2Fc/{i}"),
            };
            let (status, body) = get(&h1_client(), &format!("http://{}{path}", self.listen))
                .await
                .unwrap();
            assert_eq!((status, body.as_str()), (200, side), "request {i} ({path})");
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The router section for `h`, and more.
fn router_toml(h: &Haproxy, more: &str) -> String {
    format!(
        "[router]\nkind = \"haproxy\"\n[router.haproxy]\nsocket = \"{}\"\nconfig = \"{}\"\n\
         map = \"{}\"\nbackend = \"app\"\nbinary = \"{}\"\n{more}",
        h.socket.display(),
        h.conf.display(),
        h.map.display(),
        haproxy_bin(),
    )
}

/// bluegreen writes the map for the live side at start; HAProxy, not
/// running yet, reads it when it starts.
async fn start_after_map(h: &mut Haproxy) {
    wait_until(Duration::from_secs(10), "the map is written", || async {
        std::fs::read_to_string(&h.map).is_ok_and(|t| t.contains("live app_blue"))
    })
    .await;
    h.start().await;
}

/// Requests on one keep-alive client until `stop` (bounded: 20,000 or
/// 60 s), each with the moments it was sent and answered, and the answer.
type Answers = Arc<Mutex<Vec<(Instant, Instant, Result<(u16, String), String>)>>>;

fn keepalive_load(
    h: &Haproxy,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> (Answers, tokio::task::JoinHandle<()>) {
    let answers: Answers = Arc::default();
    let (base, out) = (format!("http://{}", h.listen), answers.clone());
    let task = tokio::spawn(async move {
        let client = h1_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..20_000u32 {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            let url = format!("{base}{path}?n={i}");
            let sent = Instant::now();
            let r = get(&client, &url).await;
            out.lock().unwrap().push((sent, Instant::now(), r));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (answers, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switches_drive_haproxy_atomically_and_a_reload_by_someone_else_keeps_them() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path(), blue.addr, green.addr);
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1")
        .extra(&router_toml(&h, ""))
        .start();
    start_after_map(&mut h).await;
    h.all_from("blue").await;
    router.wait_all_healthy().await;

    // Under keep-alive load: no request fails, and every one sent after
    // the switch returned is answered by green.
    let stop = Arc::new(AtomicBool::new(false));
    let (answers, task) = keepalive_load(&h, "/items/x", stop.clone());
    wait_until(Duration::from_secs(10), "load flows", || async {
        answers.lock().unwrap().len() > 20
    })
    .await;
    let asked = Instant::now();
    let (code, out, err) = router.cli(&["switch", "--to", "green"]);
    let returned = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    wait_until(Duration::from_secs(10), "load after the switch", || async {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| *t > returned)
            .count()
            > 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let answers = answers.lock().unwrap().clone();
    for (i, (sent, answered, r)) in answers.iter().enumerate() {
        let (status, body) = r.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(*status, 200, "request {i}: {body}");
        if *sent > returned {
            assert_eq!(body, "green", "request {i}, sent after the switch returned");
        } else if *answered < asked {
            assert_eq!(body, "blue", "request {i}, answered before the switch");
        }
    }
    h.all_from("green").await;
    let map = std::fs::read_to_string(&h.map).unwrap();
    assert!(map.contains("live app_green\nidle app_blue\n"), "{map}");

    // What arrives is what was sent: method, path, query, a header.
    let (code, body) = curl(&[
        "-H",
        "X-Request-Id: hx-42",
        &format!("http://{}/headers?x=%2F1&y=2", h.listen),
    ]);
    assert_eq!(code, 0, "{body}");
    let seen = green.state.last_headers.lock().unwrap().clone();
    assert_eq!(seen.get("x-request-id").map(String::as_str), Some("hx-42"));

    // Someone else reloads HAProxy: the new worker reads the map file, and
    // stays on green.
    h.reload().await;
    h.all_from("green").await;

    // Someone else breaks the config: refused in HAProxy's words, nothing
    // written, still green.
    h.write_conf("    bogus_keyword on", blue.addr, green.addr);
    let (code, out, err) = router.cli(&["switch", "--to", "blue"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("unknown keyword 'bogus_keyword'"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(std::fs::read_to_string(&h.map).unwrap(), map);
    assert_eq!(router.status().await["live"], "green");
    h.all_from("green").await;

    // Fixed: a rollback goes through.
    h.write_conf("", blue.addr, green.addr);
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    h.all_from("blue").await;
    assert_eq!(router.status().await["live"], "blue");

    // bluegreen's config moves green elsewhere while HAProxy's backend
    // keeps the old server: the reload is refused, naming both.
    let green2 = Backend::start("green2").await;
    let text = std::fs::read_to_string(&router.config).unwrap();
    let moved = text.replacen(
        &format!("\"{}\"", green.addr),
        &format!("\"{}\"", green2.addr),
        1,
    );
    std::fs::write(&router.config, &moved).unwrap();
    let (code, _, err) = router.cli(&["reload"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("HAProxy's backend app_green has the servers"),
        "{err}"
    );
    assert!(err.contains(&green2.addr.to_string()), "{err}");
    std::fs::write(&router.config, &text).unwrap();

    // HAProxy gone: refused, the map file as it was, live unchanged.
    h.stop();
    let before = std::fs::read_to_string(&h.map).unwrap();
    let (code, _, err) = router.cli(&["switch", "--to", "green"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach HAProxy's runtime API"), "{err}");
    assert_eq!(std::fs::read_to_string(&h.map).unwrap(), before);
    assert_eq!(router.status().await["live"], "blue");
}

/// The bake judges HAProxy's own counters (`show stat`): a release whose
/// answers through HAProxy fail is rolled back and HAProxy is back on the
/// old side; a good one passes on what HAProxy carried; a release that
/// fails its health gate never reaches HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bake_judges_the_traffic_haproxy_carried() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path(), blue.addr, green.addr);
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .drain("1s")
        .extra(&router_toml(
            &h,
            "[deploy]\ndeploy_timeout = \"2s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"3s\"\ninterval = \"500ms\"\nconsecutive = 1\nmin_requests = 20\n\
             max_error_rate = 0.05\non_inconclusive = \"fail\"\n",
        ))
        .start();
    start_after_map(&mut h).await;
    router.wait_all_healthy().await;

    // Green answers /fail with 500: through HAProxy, the bake sees it.
    let stop = Arc::new(AtomicBool::new(false));
    let (answers, task) = keepalive_load(&h, "/fail", stop.clone());
    let (code, out, err) = router.cli(&["deploy", "v1"]);
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(code, 3, "rolled back: {out}{err}");
    assert!(format!("{out}{err}").contains("error rate"), "{out}{err}");
    assert!(!answers.lock().unwrap().is_empty());
    assert_eq!(router.status().await["live"], "blue");
    h.all_from("blue").await;
    assert!(std::fs::read_to_string(&h.map)
        .unwrap()
        .contains("live app_blue"));

    // A good release passes on HAProxy's traffic alone.
    let stop = Arc::new(AtomicBool::new(false));
    let (_, task) = keepalive_load(&h, "/", stop.clone());
    let (code, out, err) = router.cli(&["deploy", "v2"]);
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let hist: serde_json::Value =
        serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let bake = hist["deploys"][1]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["step"] == "bake"))
        .map(|s| s["detail"].to_string())
        .unwrap_or_default();
    assert!(bake.contains("passed: "), "{bake}");
    assert!(!bake.contains("inconclusive"), "{bake}");
    assert_eq!(router.status().await["live"], "green");
    h.all_from("green").await;

    // The idle side (blue) goes unhealthy: the next release stops at the
    // health gate and HAProxy keeps serving green.
    blue.set_healthy(false);
    let (code, out, err) = router.cli(&["deploy", "v3"]);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(router.status().await["live"], "green");
    assert!(std::fs::read_to_string(&h.map)
        .unwrap()
        .contains("live app_green"));
    h.all_from("green").await;
}
