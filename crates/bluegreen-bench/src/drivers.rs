//! Switching through each driver: bluegreen drives its own proxy, the
//! user's nginx (with and without `worker_shutdown_timeout`) and the user's
//! HAProxy, 100 switches each (10 with `--quick`) under keep-alive load.
//! Counted: failed requests (resets, closed connections), non-2xx answers,
//! answers from the wrong side for requests that started after a switch
//! call returned, and how long each switch call took (until the driver
//! confirmed it).

use crate::load::{self, Answer};
use crate::procs::{free_port, log_file, pinned, wait_listening, Env};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// One driver's run.
pub struct DriverRun {
    pub name: &'static str,
    pub switches: usize,
    pub requests: usize,
    pub errors: usize,
    pub non2xx: usize,
    pub wrong_side: usize,
    /// Each switch call, in ms, sorted.
    pub call_ms: Vec<f64>,
}

impl DriverRun {
    fn quantile(&self, q: f64) -> f64 {
        if self.call_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.call_ms.len() - 1) as f64 * q).round() as usize;
        self.call_ms[i]
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Router {
    Builtin,
    Nginx { shutdown_timeout: bool },
    Haproxy,
}

impl Router {
    fn name(self) -> &'static str {
        match self {
            Router::Builtin => "builtin",
            Router::Nginx {
                shutdown_timeout: false,
            } => "nginx",
            Router::Nginx {
                shutdown_timeout: true,
            } => "nginx, worker_shutdown_timeout 1s",
            Router::Haproxy => "haproxy",
        }
    }
}

pub fn part(env: &Env, quick: bool, blue: u16, green: u16) -> Result<Vec<DriverRun>> {
    let count = if quick { 10 } else { 100 };
    let mut out = Vec::new();
    for router in [
        Router::Builtin,
        Router::Nginx {
            shutdown_timeout: false,
        },
        Router::Nginx {
            shutdown_timeout: true,
        },
        Router::Haproxy,
    ] {
        eprintln!("== switching through the {} driver", router.name());
        out.push(run(env, router, count, blue, green)?);
    }
    Ok(out)
}

/// A process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The absolute path of `program` on PATH.
fn which(program: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| program.to_string())
}

fn run(env: &Env, router: Router, count: usize, blue: u16, green: u16) -> Result<DriverRun> {
    let dir = env
        .dir
        .join(format!("driver-{}", router.name().replace([' ', ','], "_")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let (own, admin, front) = (free_port()?, free_port()?, free_port()?);
    let router_toml = match router {
        Router::Builtin => String::new(),
        Router::Nginx { .. } => format!(
            "[router]\nkind = \"nginx\"\n[router.nginx]\nconfig = \"{d}/nginx.conf\"\ninclude = \"{d}/bluegreen.conf\"\n\
             upstream = \"app\"\nprobe_listen = \"127.0.0.1:{}\"\nbinary = \"{}\"\n",
            free_port()?,
            which("nginx")
        ),
        Router::Haproxy => format!(
            "[router]\nkind = \"haproxy\"\n[router.haproxy]\nsocket = \"{d}/admin.sock\"\nconfig = \"{d}/haproxy.cfg\"\n\
             map = \"{d}/bluegreen.map\"\nbackend = \"app\"\nbinary = \"{}\"\n",
            which("haproxy")
        ),
    };
    match router {
        Router::Builtin => {}
        Router::Nginx { shutdown_timeout } => std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\n{}\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {d}/bluegreen.conf;\n\
                 server {{\n    listen 127.0.0.1:{front};\n    location / {{\n      proxy_pass http://app;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
                if shutdown_timeout {
                    "worker_shutdown_timeout 1s;\n"
                } else {
                    ""
                }
            ),
        )?,
        Router::Haproxy => std::fs::write(
            dir.join("haproxy.cfg"),
            format!(
                "global\n  stats socket {d}/admin.sock mode 600 level admin\n  nbthread 1\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend web\n  bind 127.0.0.1:{front}\n  use_backend %[str(live),map({d}/bluegreen.map,app_blue)]\n\
                 backend app_blue\n  server b1 127.0.0.1:{blue}\n\
                 backend app_green\n  server g1 127.0.0.1:{green}\n"
            ),
        )?,
    }
    std::fs::write(
        dir.join("bluegreen.toml"),
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{own}\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             token_env = \"BLUEGREEN_BENCH_TOKEN\"\n[state]\ndir = \"{d}/state\"\n[health]\ninterval = \"1s\"\n\
             [environments.blue]\nupstreams = [\"127.0.0.1:{blue}\"]\n\
             [environments.green]\nupstreams = [\"127.0.0.1:{green}\"]\n{router_toml}"
        ),
    )?;
    let _bluegreen = Proc(
        pinned(&env.proxy_cpus, &env.bluegreen.display().to_string())
            .args(["serve", "--config"])
            .arg(dir.join("bluegreen.toml"))
            .env("BLUEGREEN_BENCH_TOKEN", "bench")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(log_file(env, "driver-bluegreen")?)
            .spawn()
            .context("starting bluegreen")?,
    );
    wait_listening(admin, "bluegreen's admin API")?;
    // The driven router reads the file bluegreen writes at start.
    let written = |f: &str| wait_file(&dir.join(f));
    let _router = match router {
        Router::Builtin => None,
        Router::Nginx { .. } => {
            written("bluegreen.conf")?;
            Some(Proc(
                pinned(&env.proxy_cpus, "nginx")
                    .arg("-c")
                    .arg(dir.join("nginx.conf"))
                    .stdout(Stdio::null())
                    .stderr(log_file(env, "driver-nginx")?)
                    .spawn()
                    .context("starting nginx")?,
            ))
        }
        Router::Haproxy => {
            written("bluegreen.map")?;
            Some(Proc(
                pinned(&env.proxy_cpus, "haproxy")
                    .args(["-W", "-db", "-f"])
                    .arg(dir.join("haproxy.cfg"))
                    .stdout(Stdio::null())
                    .stderr(log_file(env, "driver-haproxy")?)
                    .spawn()
                    .context("starting haproxy")?,
            ))
        }
    };
    let port = if router == Router::Builtin {
        own
    } else {
        front
    };
    wait_listening(port, router.name())?;
    if router == Router::Haproxy {
        wait_file(&dir.join("admin.sock"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while call(admin, "GET", "/api/v1/status", "")?
        .matches("\"health\":\"healthy\"")
        .count()
        < 2
    {
        if Instant::now() > deadline {
            bail!("bluegreen's upstreams did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Load for as long as the switches may take, bounded.
    let gap = Duration::from_millis(100);
    let until =
        Instant::now() + Duration::from_secs(2) + (gap + Duration::from_millis(400)) * count as u32;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let load = load::closed_loop(addr, 16, until);
    std::thread::sleep(Duration::from_millis(300));
    let mut marks: Vec<(Instant, Instant, bool)> = Vec::new();
    let mut blue_live = true;
    let mut call_ms = Vec::new();
    while marks.len() < count && Instant::now() + Duration::from_millis(600) < until {
        let to = if blue_live { "green" } else { "blue" };
        let called = Instant::now();
        call(
            admin,
            "POST",
            "/api/v1/switch",
            &format!("{{\"to\":\"{to}\"}}"),
        )
        .with_context(|| format!("switch {} through {}", marks.len() + 1, router.name()))?;
        let returned = Instant::now();
        blue_live = !blue_live;
        call_ms.push((returned - called).as_secs_f64() * 1000.0);
        marks.push((called, returned, blue_live));
        std::thread::sleep(gap);
    }
    let samples = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    let mut r = DriverRun {
        name: router.name(),
        switches: marks.len(),
        requests: samples.len(),
        errors: 0,
        non2xx: 0,
        wrong_side: 0,
        call_ms,
    };
    r.call_ms.sort_by(f64::total_cmp);
    for s in &samples {
        match s.answer {
            Answer::Error => r.errors += 1,
            Answer::Status(_) => r.non2xx += 1,
            a => {
                if !crate::right_side(&marks, s.start, s.end, a == Answer::Blue) {
                    r.wrong_side += 1;
                }
            }
        }
    }
    Ok(r)
}

fn wait_file(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} was not written within 15 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One call to bluegreen's admin API; the body of a 2xx answer.
fn call(admin: u16, method: &str, path: &str, body: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 2") {
        bail!("{method} {path}: {}", out.lines().last().unwrap_or(""));
    }
    Ok(out)
}

pub fn render(o: &mut String, rows: &[DriverRun]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## Switching through each driver (16 keep-alive connections)\n"
    );
    let _ = writeln!(
        o,
        "| router | switches | requests | failed | non-2xx | wrong side after the call returned | switch call p50 ms | p99 ms | max ms | p50 / builtin |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = rows
        .iter()
        .find(|r| r.name == "builtin")
        .map(|r| r.quantile(0.5))
        .filter(|m| *m > 0.0);
    for r in rows {
        let ratio = base.map_or("—".to_string(), |b| {
            format!("{:.0}×", r.quantile(0.5) / b)
        });
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {ratio} |",
            r.name,
            r.switches,
            r.requests,
            r.errors,
            r.non2xx,
            r.wrong_side,
            r.quantile(0.5),
            r.quantile(0.99),
            r.call_ms.last().copied().unwrap_or(0.0),
        );
    }
    let _ = writeln!(
        o,
        "\n- One switch through bluegreen's admin API every 100 ms after the previous returned; \
         the call returns once the driver confirmed the switch (nginx: reloaded, old workers shutting down, \
         3 probes from the new side; HAProxy: map committed and read back). Failed = a request whose \
         connection was reset or closed under it (the client reconnects and goes on); nginx closes idle \
         keep-alive connections when its old workers shut down at each reload."
    );
}
