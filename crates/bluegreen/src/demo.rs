//! `bluegreen demo`: the whole release cycle in one command. Starts the
//! router with an embedded default config whose built-in supervisor runs the
//! demo app, deploys v1, then v2 under live traffic, and with `--broken` a v3
//! that starts failing under real traffic and is rolled back by the bake. It
//! counts every response by the version that served it.

use crate::client::progress::{Mode, Progress};
use crate::server::serve;
use anyhow::Context;
use bluegreen_core::config::Config;
use bluegreen_core::deploy::{DeployOptions, Outcome};
use bluegreen_pipeline::Pipeline;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The embedded default config the demo runs with; `{{..}}` are filled in.
const DEMO_CONFIG: &str = r#"
[proxy]
listen = "{{proxy}}"
preview_listen = "{{preview}}"

[admin]
listen = "{{admin}}"

[state]
dir = "{{state}}"

[health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2

[environments.blue]
upstreams = ["{{blue}}"]

[environments.green]
upstreams = ["{{green}}"]

[switch]
drain_timeout = "2s"

[deploy]
deploy_timeout = "30s"

[deploy.supervisor]
run = "{bluegreen} app --listen {address} --name {env}"
stop_on_exit = true

[[deploy.smoke]]
name = "serves its version"
path = "/version"
expect_json = { "/version" = "{version}" }
max_latency = "1s"

[deploy.bake]
duration = "{{bake}}"
interval = "500ms"
min_requests = 20
max_error_rate = 0.02
"#;

/// Flags of `bluegreen demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Live listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Preview listener (always the idle side).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub preview_listen: SocketAddr,
    /// Admin API listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// Also deploy a broken v3 that fails under live traffic and is rolled back.
    #[arg(long)]
    pub broken: bool,
    /// Concurrent keep-alive clients generating traffic.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Bake time of each deploy, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub bake: f64,
    /// After the demo, keep the router running until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// Responses by what answered them.
#[derive(Default)]
struct Tally {
    by_version: BTreeMap<String, u64>,
    /// 5xx the broken version answered on purpose, before the rollback.
    broken: u64,
    /// Anything else that was not a good answer.
    failed: u64,
}

/// Entry point of `bluegreen demo`.
pub fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // 1. The router with the embedded default config and a fresh state dir.
    let state_dir = TempDir::new()?;
    // The apps' ports stay reserved (bound) until the router has bound its
    // own listeners, so a listener on port 0 can never be given one of them.
    let (blue_port, green_port) = (reserve_port()?, reserve_port()?);
    let text = DEMO_CONFIG
        .replace("{{proxy}}", &args.listen.to_string())
        .replace("{{preview}}", &args.preview_listen.to_string())
        .replace("{{admin}}", &args.admin_listen.to_string())
        .replace("{{state}}", &state_dir.0.display().to_string())
        .replace("{{blue}}", &blue_port.local_addr()?.to_string())
        .replace("{{green}}", &green_port.local_addr()?.to_string())
        .replace(
            "{{bake}}",
            &format!("{}ms", (args.bake.clamp(0.5, 600.0) * 1000.0) as u64),
        );
    let config = Config::parse(&text, "<embedded demo config>", Path::new("."))?;
    let token = random_token();
    // The demo is not upgradable: nobody listens on the control channel.
    let (control, _requests) = tokio::sync::mpsc::channel(1);
    let process = serve::Process {
        sockets: crate::server::sockets::Sockets::default(),
        handover: false,
        control,
    };
    // The demo's listeners come from flags, not a config file: name those.
    let running = serve::start(config, &token, process).await.map_err(|e| {
        let text = format!("{e:#}")
            .replace("(proxy.listen)", "(--listen; pick another port)")
            .replace(
                "(proxy.preview_listen)",
                "(--preview-listen; pick another port)",
            )
            .replace("(admin.listen)", "(--admin-listen; pick another port)");
        anyhow::anyhow!(text)
    })?;
    drop((blue_port, green_port));
    let pipeline = running
        .pipeline
        .clone()
        .context("the demo config has a pipeline")?;
    let _ = outln!(
        "router: live traffic on http://{}, preview (idle side) on http://{}, admin API on http://{}\n",
        running.proxy,
        running.preview.context("demo has a preview listener")?,
        running.admin
    );

    // 2. v1 goes to the idle side and becomes live.
    let mut ok = deploy(&pipeline, "v1", BTreeMap::new()).await? == Outcome::Succeeded;

    // 3. Live traffic from now on, counted by the version that answered.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients.max(1))
        .map(|_| tokio::spawn(traffic(running.proxy, tally.clone(), stop.clone())))
        .collect();
    let _ = outln!(
        "\nsending live traffic with {} keep-alive clients...\n",
        args.clients.max(1)
    );

    // 4. v2 under load: zero failed requests expected.
    ok &= deploy(&pipeline, "v2", BTreeMap::new()).await? == Outcome::Succeeded;

    // 5. A broken v3: passes health and smoke, then fails under real traffic.
    if args.broken {
        let _ = outln!("\nnow a broken v3: it passes health and smoke tests, then answers 500 under real traffic\n");
        let env = BTreeMap::from([("BLUEGREEN_APP_ERROR_AFTER".to_string(), "5".to_string())]);
        ok &= deploy(&pipeline, "v3", env).await? == Outcome::RolledBack;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    // 6. The verdict.
    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    let served: Vec<String> = t
        .by_version
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    let _ = outln!("\nlive requests answered by version: {}", served.join(", "));
    if args.broken {
        let _ = outln!(
            "500s from the broken v3 before the bake rolled it back: {}",
            t.broken
        );
    }
    let _ = outln!("failed requests (errors, resets, 502/503): {}", t.failed);
    if args.keep_running {
        let _ = outln!(
            "\nThe router keeps running. Try:\n  curl http://{proxy}/\n  export BLUEGREEN_ADMIN=http://{admin} BLUEGREEN_TOKEN={token}\n  bluegreen status\n  bluegreen deploy v4\n  bluegreen history\nPress Ctrl-C to stop.",
            proxy = running.proxy,
            admin = running.admin,
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    running.shutdown(false).await;
    if !ok || t.failed > 0 {
        let _ =
            outln!("demo FAILED: every deploy should end as expected with zero failed requests");
        return Ok(ExitCode::from(1));
    }
    let _ = outln!("every release ended as expected, with zero failed requests.");
    Ok(ExitCode::SUCCESS)
}

/// Runs one deploy in-process, showing the same progress as `bluegreen deploy`.
async fn deploy(
    p: &Arc<Pipeline>,
    version: &str,
    env: BTreeMap<String, String>,
) -> anyhow::Result<Outcome> {
    let options = DeployOptions {
        env,
        actor: "demo".into(),
        reason: format!("demo release {version}"),
        ..DeployOptions::default()
    };
    let record = p.deploy(version, options).await?;
    let mut progress = Progress::new(Mode::detect(false));
    loop {
        let d = p.get(record.id).await?;
        if d.is_finished() {
            // The demo runs to its end (and stops what it started) even
            // when nobody reads its output any more.
            let _ = progress.finish(&d);
            return Ok(d.outcome);
        }
        let _ = progress.update(&d);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn traffic(proxy: SocketAddr, tally: Arc<Mutex<Tally>>, stop: Arc<AtomicBool>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{proxy}/").parse().expect("valid URI");
    // Bounded in time by the demo and in count as a guard.
    for _ in 0..10_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let answer = match client.get(uri.clone()).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).ok();
                body.map(|b| (status, String::from_utf8_lossy(&b).into_owned()))
            }
            Err(_) => None,
        };
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Some((200, body)) => {
                let version = body.split_whitespace().nth(1).unwrap_or("?").to_string();
                *t.by_version.entry(version).or_default() += 1;
            }
            Some((500, body)) if body.contains("simulated failure") => t.broken += 1,
            _ => t.failed += 1,
        }
    }
}

/// A free port for one of the demo's upstreams, held until dropped.
fn reserve_port() -> anyhow::Result<std::net::TcpListener> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
}

fn random_token() -> String {
    let mut buf = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A state directory removed when the demo ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("bluegreen-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
