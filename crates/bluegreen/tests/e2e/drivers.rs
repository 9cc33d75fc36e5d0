//! bluegreen driving the user's nginx (`router.kind = "nginx"`): real nginx
//! from Debian, started by the test with a config that includes the file
//! bluegreen writes. A switch through the CLI returns once nginx serves the
//! new side, and from then on every fresh request through nginx answers from
//! it; a config someone else broke refuses the switch and changes nothing
//! (the file, the live side, what nginx serves); an nginx that is gone
//! refuses it too and the file is put back.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// nginx from Debian.
fn nginx_bin() -> String {
    sbin("nginx")
}

/// The user's nginx: its main config (listening on `listen`, passing to the
/// upstream `app` of the file bluegreen writes), run in the foreground.
struct Nginx {
    conf: PathBuf,
    include: PathBuf,
    listen: std::net::SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    fn new(dir: &Path) -> Nginx {
        let nginx = Nginx {
            conf: dir.join("nginx.conf"),
            include: dir.join("bluegreen.conf"),
            listen: closed_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        nginx.write_conf("");
        nginx
    }

    /// The main config, with `more` inside `http {}` (a later edit).
    fn write_conf(&self, more: &str) {
        let d = self.dir.display();
        std::fs::write(
            &self.conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
                 include {};\n{more}\n\
                 server {{\n        listen {};\n        access_log {d}/access.json bluegreen;\n        location / {{\n            proxy_pass http://app;\n\
                 proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n",
                self.include.display(),
                self.listen,
            ),
        )
        .unwrap();
    }

    async fn start(&mut self) {
        let child = Command::new(nginx_bin())
            .args(["-c", self.conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx (scripts/test installs it)");
        self.child = Some(child);
        let url = format!("http://{}/", self.listen);
        wait_until(Duration::from_secs(10), "nginx answers", || async {
            get(&h1_client(), &url).await.is_ok()
        })
        .await;
    }

    /// SIGTERM, so the master stops its workers too (a SIGKILLed master
    /// leaves them serving, holding every file the test inherited).
    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_gracefully(c);
        }
    }

    /// One request on a fresh connection through nginx: the body.
    async fn body(&self, path: &str) -> String {
        let (status, body) = get(&h1_client(), &format!("http://{}{path}", self.listen))
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fresh requests through nginx, on varied paths: every one from `side`.
async fn all_from(nginx: &Nginx, side: &str) {
    for i in 0..20 {
        let path = match i % 3 {
            0 => "/".to_string(),
            1 => format!("/items/{i}?q=%20x&n={i}"),
            _ => format!("/a/b%2Fc/{i}"),
        };
        let body = nginx.body(&path).await;
        assert_eq!(body, side, "request {i} ({path}) after the switch returned");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn switches_drive_nginx_and_a_broken_nginx_refuses_them_changing_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let mut nginx = Nginx::new(dir.path());
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1")
        .extra(&format!(
            "[router]\nkind = \"nginx\"\n[router.nginx]\nconfig = \"{}\"\ninclude = \"{}\"\n\
             upstream = \"app\"\nprobe_listen = \"{}\"\nbinary = \"{}\"\n",
            nginx.conf.display(),
            nginx.include.display(),
            closed_port(),
            nginx_bin(),
        ))
        .start();
    // bluegreen writes the file for the live side at start; nginx, not
    // running yet, reads it when it starts.
    wait_until(
        Duration::from_secs(10),
        "the include is written",
        || async {
            std::fs::read_to_string(&nginx.include).is_ok_and(|t| t.contains("# live: blue"))
        },
    )
    .await;
    nginx.start().await;
    all_from(&nginx, "blue").await;
    router.wait_all_healthy().await;

    // A switch returns once nginx serves green: no fresh request after it
    // reaches blue.
    let (code, out, err) = router.cli(&["switch", "--to", "green"]);
    assert_eq!(code, 0, "{out}{err}");
    all_from(&nginx, "green").await;
    let text = std::fs::read_to_string(&nginx.include).unwrap();
    assert!(text.contains("# live: green"), "{text}");
    assert!(text.contains(&format!("server {};", green.addr)), "{text}");
    assert!(!text.contains(&blue.addr.to_string()), "{text}");

    // A weight cannot be given to nginx's traffic: refused by name.
    let (code, _, err) = router.cli(&["weight", "blue", "10"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("nginx (router.kind) carries live traffic"),
        "{err}"
    );

    // Someone else breaks nginx's config: the switch is refused in nginx's
    // own words, and nothing changed.
    nginx.write_conf("    bogus_directive on;");
    let before = std::fs::read_to_string(&nginx.include).unwrap();
    let (code, out, err) = router.cli(&["switch", "--to", "blue"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("unknown directive \"bogus_directive\""),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(std::fs::read_to_string(&nginx.include).unwrap(), before);
    assert_eq!(router.status().await["live"], "green");
    all_from(&nginx, "green").await;

    // Fixed, the switch goes through; a rollback too.
    nginx.write_conf("");
    let (code, out, err) = router.cli(&["switch", "--to", "blue"]);
    assert_eq!(code, 0, "{out}{err}");
    all_from(&nginx, "blue").await;
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    all_from(&nginx, "green").await;
    assert_eq!(router.status().await["live"], "green");

    // A reload that moves green (live) to another upstream: nginx gets it
    // before the reload is done.
    let green2 = Backend::start("green2").await;
    let text = std::fs::read_to_string(&router.config).unwrap();
    let moved = text.replacen(
        &format!("\"{}\"", green.addr),
        &format!("\"{}\"", green2.addr),
        1,
    );
    assert_ne!(text, moved);
    std::fs::write(&router.config, moved).unwrap();
    let (code, out, err) = router.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    all_from(&nginx, "green2").await;
    let text = std::fs::read_to_string(&nginx.include).unwrap();
    assert!(text.contains(&format!("server {};", green2.addr)), "{text}");

    // nginx gone: the reload fails, the file is put back, live unchanged.
    nginx.stop();
    let before = std::fs::read_to_string(&nginx.include).unwrap();
    let (code, _, err) = router.cli(&["switch", "--to", "blue"]);
    assert_ne!(code, 0);
    assert!(err.contains("`nginx -s reload` failed"), "{err}");
    assert!(err.contains("the previous file is back"), "{err}");
    assert_eq!(std::fs::read_to_string(&nginx.include).unwrap(), before);
    assert_eq!(router.status().await["live"], "green");
}

/// Requests through nginx on `path` until `stop` (bounded: 20,000 requests
/// or 60 s): how many were answered.
fn load(
    nginx: &Nginx,
    path: &str,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let sent = Arc::new(AtomicU64::new(0));
    let (url, n) = (format!("http://{}{path}", nginx.listen), sent.clone());
    let task = tokio::spawn(async move {
        let client = h1_client();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst)
            && n.load(Ordering::SeqCst) < 20_000
            && std::time::Instant::now() < deadline
        {
            if get(&client, &url).await.is_ok() {
                n.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (sent, task)
}

/// The bake judges nginx's own traffic (its access log, followed): a
/// release whose answers through nginx fail is rolled back and nginx is
/// back on the old side; a good one passes on the requests nginx carried
/// (without them it would be inconclusive, which fails); one that fails
/// its health gate never reaches nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bake_judges_the_traffic_nginx_carried() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let mut nginx = Nginx::new(dir.path());
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .drain("1s")
        .extra(&format!(
            "[router]\nkind = \"nginx\"\n[router.nginx]\nconfig = \"{}\"\ninclude = \"{}\"\n\
             upstream = \"app\"\nprobe_listen = \"{}\"\nbinary = \"{}\"\naccess_log = \"{}\"\n\
             [deploy]\ndeploy_timeout = \"5s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"2s\"\ninterval = \"500ms\"\nconsecutive = 1\nmin_requests = 20\n\
             max_error_rate = 0.05\non_inconclusive = \"fail\"\n",
            nginx.conf.display(),
            nginx.include.display(),
            closed_port(),
            nginx_bin(),
            dir.path().join("access.json").display(),
        ))
        .start();
    wait_until(
        Duration::from_secs(10),
        "the include is written",
        || async {
            std::fs::read_to_string(&nginx.include).is_ok_and(|t| t.contains("# live: blue"))
        },
    )
    .await;
    nginx.start().await;
    router.wait_all_healthy().await;

    // Green answers /fail with 500: through nginx, the bake sees it.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, task) = load(&nginx, "/fail", stop.clone());
    let (code, out, err) = router.cli(&["deploy", "v1"]);
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(code, 3, "rolled back: {out}{err}");
    assert!(format!("{out}{err}").contains("error rate"), "{out}{err}");
    assert!(sent.load(Ordering::SeqCst) > 0);
    assert_eq!(router.status().await["live"], "blue");
    all_from(&nginx, "blue").await;

    // A good release passes on nginx's traffic alone.
    let stop = Arc::new(AtomicBool::new(false));
    let (_, task) = load(&nginx, "/", stop.clone());
    let (code, out, err) = router.cli(&["deploy", "v2"]);
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let h: serde_json::Value = serde_json::from_str(&router.cli(&["history", "--json"]).1).unwrap();
    let bake = h["deploys"][1]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["step"] == "bake"))
        .map(|s| s["detail"].to_string())
        .unwrap_or_default();
    // Judged on what nginx carried, not passed for want of it.
    assert!(bake.contains("passed: "), "{bake}");
    assert!(!bake.contains("inconclusive"), "{bake}");
    assert_eq!(router.status().await["live"], "green");
    all_from(&nginx, "green").await;

    // The idle side (blue) goes unhealthy: the next release stops at the
    // health gate, and nginx's file and traffic stay on green.
    let include = std::fs::read_to_string(&nginx.include).unwrap();
    blue.set_healthy(false);
    let (code, out, err) = router.cli(&["deploy", "v3"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("health"), "{out}{err}");
    assert_eq!(router.status().await["live"], "green");
    assert_eq!(std::fs::read_to_string(&nginx.include).unwrap(), include);
    all_from(&nginx, "green").await;
}

/// Kubernetes in dry run: a switch goes through bluegreen's own proxy and
/// bluegreen's log holds the exact requests the driver would have sent
/// (the Service patch with its precondition), the token never printed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_driver_switches_our_proxy_and_prints_the_requests() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .health("interval = \"100ms\"\nhealthy_threshold = 1")
        .extra(
            "[router]\nkind = \"kubernetes\"\n[router.kubernetes]\ndry_run = true\n\
             namespace = \"shop\"\nservice = \"web\"\ntoken_file = \"/secret/token\"\n",
        )
        .start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["switch", "--to", "green"]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = get(&h1_client(), &router.url("/x?y=1")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "green"));
    wait_until(
        Duration::from_secs(10),
        "the plan is in the log",
        || async {
            router
                .stderr()
                .contains("PATCH /api/v1/namespaces/shop/services/web HTTP/1.1")
        },
    )
    .await;
    let log = router.stderr();
    assert!(log.contains("nothing was sent"), "{log}");
    assert!(
        log.contains(r#"\"selector\":{\"slot\":\"green\"}"#)
            || log.contains(r#""selector":{"slot":"green"}"#),
        "{log}"
    );
    assert!(log.contains("Bearer <redacted: /secret/token>"), "{log}");
}
