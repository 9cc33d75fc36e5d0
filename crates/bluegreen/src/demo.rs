//! `bluegreen demo`: the whole idea in one command. Starts two demo apps as
//! child processes (blue v1, green v2), the router in front of them with the
//! embedded default config, keeps live traffic flowing, switches to green and
//! rolls back under that load, and reports every response by side.

use crate::serve;
use anyhow::{bail, Context};
use bluegreen_core::config::Config;
use bluegreen_core::state::{SwitchKind, SwitchRequest};
use bluegreen_core::Side;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The embedded default config the demo runs with; `{..}` are filled in.
const DEMO_CONFIG: &str = r#"
[proxy]
listen = "{proxy}"
preview_listen = "{preview}"

[admin]
listen = "{admin}"
token_env = "BLUEGREEN_TOKEN"

[state]
dir = "{state}"

[health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2

[environments.blue]
upstreams = ["{blue}"]

[environments.green]
upstreams = ["{green}"]

[switch]
drain_timeout = "5s"
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
    /// Concurrent keep-alive clients generating traffic during the tour.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds between the steps of the tour.
    #[arg(long, default_value_t = 3.0)]
    pub step: f64,
    /// After the tour, keep the router running until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

#[derive(Default)]
struct Counts {
    blue: AtomicU64,
    green: AtomicU64,
    errors: AtomicU64,
}

/// Entry point of `bluegreen demo`.
pub fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let step = Duration::from_secs_f64(args.step.clamp(0.2, 60.0));
    // 1. Two demo apps as real child processes.
    let (_blue, blue_addr) = spawn_app("blue", "v1").await?;
    let (_green, green_addr) = spawn_app("green", "v2").await?;
    println!("started demo apps: blue v1 on {blue_addr}, green v2 on {green_addr}");

    // 2. The router, from the embedded default config, with a fresh state dir.
    let state_dir = TempDir::new()?;
    let text = DEMO_CONFIG
        .replace("{proxy}", &args.listen.to_string())
        .replace("{preview}", &args.preview_listen.to_string())
        .replace("{admin}", &args.admin_listen.to_string())
        .replace("{state}", &state_dir.0.display().to_string())
        .replace("{blue}", &blue_addr.to_string())
        .replace("{green}", &green_addr.to_string());
    let config = Config::parse(&text, "<embedded demo config>", Path::new("."))?;
    let token = random_token();
    let running = serve::start(config, &token).await?;
    let router = running.router.clone();
    println!(
        "router: live traffic on http://{}  preview (idle side) on http://{}  admin on http://{}",
        running.proxy,
        running.preview.expect("demo has a preview listener"),
        running.admin
    );
    wait_healthy(&router).await?;
    println!(
        "both sides healthy; blue is live. Sending traffic with {} keep-alive clients...\n",
        args.clients
    );

    // 3. Live traffic for the whole tour, counted by the side that answered.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..args.clients.max(1) {
        clients.push(tokio::spawn(traffic(
            running.proxy,
            counts.clone(),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let report = {
        let counts = counts.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                println!(
                    "[{:>5.1}s] live={:<5}  answered by blue {:>7}  green {:>7}  failed {}",
                    started.elapsed().as_secs_f64(),
                    router.live().as_str(),
                    counts.blue.load(Ordering::Relaxed),
                    counts.green.load(Ordering::Relaxed),
                    counts.errors.load(Ordering::Relaxed)
                );
            }
        })
    };

    // 4. The tour: switch to green under load, then roll back.
    tokio::time::sleep(step).await;
    let t = Instant::now();
    let out = router
        .switch(SwitchRequest {
            to: Side::Green,
            kind: SwitchKind::Switch,
            forced: false,
            actor: "demo".into(),
            reason: "demo: release v2".into(),
        })
        .await?;
    println!(
        "==> switch: {} in {:.2} ms",
        out.message,
        t.elapsed().as_secs_f64() * 1000.0
    );
    tokio::time::sleep(step).await;
    let t = Instant::now();
    let out = router
        .rollback(false, "demo".into(), "demo: roll back to v1".into())
        .await?;
    println!(
        "==> rollback: {} in {:.2} ms",
        out.message,
        t.elapsed().as_secs_f64() * 1000.0
    );
    tokio::time::sleep(step).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    report.abort();

    // 5. The verdict.
    let (b, g, e) = (
        counts.blue.load(Ordering::Relaxed),
        counts.green.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    println!(
        "\n{} requests: {b} answered by blue, {g} by green, {e} failed",
        b + g + e
    );
    if args.keep_running {
        println!(
            "\nThe router keeps running. Try:\n  curl http://{proxy}/\n  curl http://{preview}/\n  export BLUEGREEN_ADMIN=http://{admin} BLUEGREEN_TOKEN={token}\n  bluegreen status\n  bluegreen switch\nPress Ctrl-C to stop.",
            proxy = running.proxy,
            preview = running.preview.expect("preview"),
            admin = running.admin,
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    running.shutdown().await;
    if e > 0 || b == 0 || g == 0 {
        println!("demo FAILED: every request should succeed and both sides should have served");
        return Ok(ExitCode::from(1));
    }
    println!("zero failed requests across the switch and the rollback.");
    Ok(ExitCode::SUCCESS)
}

async fn spawn_app(name: &str, version: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find the bluegreen executable")?;
    let mut child = Command::new(exe)
        .args([
            "app",
            "--name",
            name,
            "--app-version",
            version,
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the {name} demo app"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .with_context(|| format!("the {name} demo app did not start within 10s"))??
        .with_context(|| format!("the {name} demo app exited before listening"))?;
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("unexpected first line from the {name} demo app: {line:?}"))?;
    Ok((child, addr))
}

async fn wait_healthy(router: &bluegreen_router::Router) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = router.snapshot();
        if Side::ALL.iter().all(|&s| snap.pools[s].healthy_count() > 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the demo apps did not become healthy within 10s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn traffic(proxy: SocketAddr, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{proxy}/").parse().expect("valid URI");
    // Bounded in time by the tour and in count as a guard.
    for _ in 0..10_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let ok = match client.get(uri.clone()).await {
            Ok(resp) if resp.status().is_success() => {
                resp.into_body().collect().await.ok().map(|b| b.to_bytes())
            }
            _ => None,
        };
        let counter = match ok.as_deref() {
            Some(b) if b.starts_with(b"blue") => &counts.blue,
            Some(b) if b.starts_with(b"green") => &counts.green,
            _ => &counts.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
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
