//! Several bluegreen nodes on one etcd: the time from a switch call to
//! every node having applied it (the call returns then), over many
//! switches made through rotating nodes, with 1, 3, 5 and 10 nodes on
//! loopback under load; every answer checked against the switch timeline;
//! and what following the shared state costs a node when nothing happens.

use crate::load::{closed_loop, Answer};
use crate::procs::{free_port, stat_field, status_kib, Env};
use anyhow::{bail, Context, Result};
use bluegreen_store::etcd::testing::EtcdServer;
use std::fmt::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One cluster size.
pub struct Convergence {
    pub nodes: usize,
    pub switches: usize,
    /// Call to return (the API returns once every node applied it), ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Switches some node had not applied within `converge_timeout`.
    pub not_converged: usize,
    pub requests: usize,
    pub wrong_side: usize,
    pub failed: usize,
    /// Per node, idle (no traffic, no switches): CPU ms per second, RSS MiB.
    pub idle_cpu_ms_per_s: f64,
    pub rss_mib: f64,
    /// Per node and switch, CPU ms (applying, reporting, watching).
    pub cpu_ms_per_switch: f64,
}

struct Node {
    child: Child,
    proxy: u16,
    admin: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs every cluster size against one etcd.
pub fn part(env: &Env, quick: bool, blue: u16, green: u16) -> Result<Vec<Convergence>> {
    let etcd = EtcdServer::start();
    let sizes: &[usize] = if quick { &[1, 3] } else { &[1, 3, 5, 10] };
    let switches = if quick { 30 } else { 200 };
    let mut out = Vec::new();
    for &n in sizes {
        eprintln!("== cluster of {n} node(s): {switches} switches");
        out.push(size(env, &etcd.client_url, n, switches, blue, green)?);
    }
    Ok(out)
}

fn size(
    env: &Env,
    etcd: &str,
    n: usize,
    switches: usize,
    blue: u16,
    green: u16,
) -> Result<Convergence> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prefix = format!("/bench/{}/{n}", std::process::id());
    let nodes: Vec<Node> = (0..n)
        .map(|i| start(env, etcd, &prefix, i, blue, green))
        .collect::<Result<_>>()?;
    // Every node up and listed by the others.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = rt
            .block_on(call(nodes[0].admin, "GET", "/api/v1/status", ""))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|s| s["cluster"]["nodes"].as_array().map(|a| a.len()))
            .unwrap_or(0);
        if listed == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("{listed} of {n} nodes listed after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle: what following etcd costs a node when nothing changes.
    let idle = Duration::from_secs(3);
    let before: Vec<u64> = nodes.iter().map(|n| cpu_ticks(n.child.id())).collect();
    std::thread::sleep(idle);
    let idle_ticks: u64 = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| cpu_ticks(n.child.id()).saturating_sub(*b))
        .sum();
    let idle_cpu_ms_per_s = idle_ticks as f64 * 10.0 / n as f64 / idle.as_secs_f64();
    let rss_mib = nodes
        .iter()
        .map(|n| status_kib(n.child.id(), "VmRSS:").unwrap_or(0))
        .sum::<u64>() as f64
        / 1024.0
        / n as f64;
    // Load on every node while switching through each in turn.
    let until = Instant::now() + Duration::from_millis(600 + switches as u64 * 60);
    let loads: Vec<_> = nodes
        .iter()
        .map(|node| closed_loop(([127, 0, 0, 1], node.proxy).into(), 2, until))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before: Vec<u64> = nodes.iter().map(|n| cpu_ticks(n.child.id())).collect();
    let mut marks = Vec::new();
    let mut took = Vec::new();
    let mut not_converged = 0;
    let mut to_blue = false;
    for i in 0..switches {
        if Instant::now() + Duration::from_millis(200) > until {
            break;
        }
        let node = &nodes[i % n];
        let side = if to_blue { "blue" } else { "green" };
        let called = Instant::now();
        let answer = rt
            .block_on(call(
                node.admin,
                "POST",
                "/api/v1/switch",
                &format!("{{\"to\":\"{side}\"}}"),
            ))
            .with_context(|| format!("switch {i} through node {}", i % n))?;
        let returned = Instant::now();
        let v: serde_json::Value = serde_json::from_str(&answer)?;
        if v["converged"]["stale"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            not_converged += 1;
        }
        marks.push((called, returned, to_blue));
        took.push(returned.duration_since(called).as_secs_f64() * 1000.0);
        to_blue = !to_blue;
        std::thread::sleep(Duration::from_millis(20));
    }
    let switch_ticks: u64 = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| cpu_ticks(n.child.id()).saturating_sub(*b))
        .sum();
    let mut requests = 0;
    let mut wrong_side = 0;
    let mut failed = 0;
    for load in loads {
        let samples = load
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        requests += samples.len();
        for s in samples {
            match s.answer {
                Answer::Error | Answer::Status(_) => failed += 1,
                a => {
                    if !crate::right_side(&marks, s.start, s.end, a == Answer::Blue) {
                        wrong_side += 1;
                    }
                }
            }
        }
    }
    took.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    Ok(Convergence {
        nodes: n,
        switches: took.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        not_converged,
        requests,
        wrong_side,
        failed,
        idle_cpu_ms_per_s,
        rss_mib,
        // Load is running meanwhile: this is an upper bound on the switch's
        // own cost (request handling is in it too).
        cpu_ms_per_switch: switch_ticks as f64 * 10.0 / n as f64 / took.len().max(1) as f64,
    })
}

/// A node of the cluster, serving when this returns.
fn start(env: &Env, etcd: &str, prefix: &str, i: usize, blue: u16, green: u16) -> Result<Node> {
    let (proxy, admin) = (free_port()?, free_port()?);
    let dir = env
        .dir
        .join(format!("cluster{prefix}").replace('/', "-"))
        .join(i.to_string());
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bluegreen.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{proxy}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_env = \"BENCH_TOKEN\"\n\
             [state]\ndir = \"{state}\"\nbackend = \"etcd\"\n[state.etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"{prefix}\"\nnode = \"node-{i}\"\n\
             [health]\npath = \"/\"\ninterval = \"1s\"\n\
             [environments.blue]\nupstreams = [\"127.0.0.1:{blue}\"]\n[environments.green]\nupstreams = [\"127.0.0.1:{green}\"]\n",
            state = dir.join("state").display(),
        ),
    )?;
    let mut cmd = if env.proxy_cpus.is_empty() {
        Command::new(&env.bluegreen)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &env.proxy_cpus]).arg(&env.bluegreen);
        c
    };
    let child = cmd
        .args(["serve", "--config"])
        .arg(&config)
        .env("BENCH_TOKEN", "bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()
        .context("starting a bluegreen node")?;
    let node = Node {
        child,
        proxy,
        admin,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(call(admin, "GET", "/readyz", "")).is_err() {
        if Instant::now() > deadline {
            bail!(
                "node {i} not ready: {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(node)
}

/// CPU ticks (1/100 s), user and kernel, of one process (`taskset` execs
/// the binary, so the pid is the node's).
fn cpu_ticks(pid: u32) -> u64 {
    stat_field(pid, 11).unwrap_or(0) + stat_field(pid, 12).unwrap_or(0)
}

/// One admin call with the bench token; the body, or an error.
async fn call(port: u16, method: &str, path: &str, body: &str) -> Result<String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", "Bearer bench")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !status.is_success() {
        bail!("{path}: {status} {text}");
    }
    Ok(text)
}

/// The convergence table and the targets.
pub fn render(o: &mut String, rows: &[Convergence]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n## Several nodes on etcd: switch convergence\n");
    let _ = writeln!(
        o,
        "| nodes | switches | p50 ms | p99 ms | max ms | not converged | requests | wrong side | failed | idle CPU ms/s per node | RSS MiB per node | CPU ms per switch per node |"
    );
    let _ = writeln!(
        o,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.2} | {:.1} | {:.2} |",
            r.nodes,
            r.switches,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.not_converged,
            r.requests,
            r.wrong_side,
            r.failed,
            r.idle_cpu_ms_per_s,
            r.rss_mib,
            r.cpu_ms_per_switch
        );
    }
    if let Some(five) = rows.iter().find(|r| r.nodes == 5) {
        let _ = writeln!(
            o,
            "\n- p99 from the switch call to every node applied, 5 nodes: {:.1} ms (target < 100 ms) — {}",
            five.p99_ms,
            if five.p99_ms < 100.0 { "met" } else { "**not met**" }
        );
    }
    let wrong: usize = rows.iter().map(|r| r.wrong_side).sum();
    let failed: usize = rows.iter().map(|r| r.failed).sum();
    let _ = writeln!(
        o,
        "- Wrong-side answers after a switch call returned: {wrong}; failed requests: {failed} (target 0 and 0) — {}",
        if wrong + failed == 0 { "met" } else { "**not met**" }
    );
    let _ = writeln!(
        o,
        "- How: one etcd on loopback; nodes pinned with the proxies, the load (2 keep-alive connections per node) and etcd elsewhere; each switch goes through the next node's admin API and returns once every node reported it (`converge_timeout` 5 s); 20 ms between switches. The call-to-return time is what a user waits; a node's apply is the watch event plus one snapshot swap. Idle cost: 3 s with no traffic and no switches (lease renewal and the watch). CPU per switch includes serving the load meanwhile, so it is an upper bound."
    );
}
