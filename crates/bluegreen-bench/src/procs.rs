//! The processes under test: the fixed upstream, and each proxy (bluegreen,
//! nginx, HAProxy, or none for "direct"), started pinned to their cores from
//! the configs in `bench/conf/`, switched the way each one switches, and
//! measured (resident memory, CPU time) through `/proc`.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which proxy, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Bluegreen,
    Nginx,
    Haproxy,
    Caddy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Bluegreen => "bluegreen",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Caddy => "caddy",
        }
    }
}

/// Where things run and where their files go.
#[derive(Clone)]
pub struct Env {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub bluegreen: PathBuf,
    /// `taskset -c` lists; empty when pinning is not possible.
    pub proxy_cpus: String,
    pub load_cpus: String,
    /// Worker threads or processes per proxy (1 everywhere but the scaling part).
    pub workers: usize,
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn render(env: &Env, template: &str, out: &str, vars: &[(&str, String)]) -> Result<PathBuf> {
    let mut text = std::fs::read_to_string(env.conf.join(template))
        .with_context(|| format!("reading bench/conf/{template}"))?;
    text = text.replace("{{DIR}}", &env.dir.display().to_string());
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    let path = env.dir.join(out);
    std::fs::write(&path, text)?;
    Ok(path)
}

pub(crate) fn pinned(cpus: &str, program: &str) -> Command {
    // By absolute path: nginx re-executes its own argv[0] for a binary
    // upgrade, without a PATH search.
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    let program = found
        .as_deref()
        .and_then(|p| p.to_str())
        .unwrap_or(program)
        .to_string();
    let program = program.as_str();
    if cpus.is_empty() {
        Command::new(program)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", cpus, program]);
        c
    }
}

pub(crate) fn log_file(env: &Env, name: &str) -> Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(
        env.dir.join(format!("{name}.stderr")),
    )?))
}

/// Waits until something accepts on `port`.
pub fn wait_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port} within 15s")
}

/// The fixed upstream: nginx with a blue and a green server.
pub struct Upstream {
    pub blue: u16,
    pub green: u16,
    child: Child,
}

impl Upstream {
    pub fn start(env: &Env) -> Result<Upstream> {
        std::fs::write(env.dir.join("64k.bin"), vec![b'x'; 64 * 1024])?;
        let (blue, green) = (free_port()?, free_port()?);
        let conf = render(
            env,
            "upstream-nginx.conf",
            "upstream-nginx.conf",
            &[
                ("BLUE_PORT", blue.to_string()),
                ("GREEN_PORT", green.to_string()),
            ],
        )?;
        let child = pinned(&env.load_cpus, "nginx")
            .args(["-p", &env.dir.display().to_string(), "-c"])
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the upstream nginx (is nginx installed? bench/run installs it)")?;
        wait_listening(blue, "upstream nginx")?;
        wait_listening(green, "upstream nginx")?;
        Ok(Upstream { blue, green, child })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let _ = self.child.wait();
    }
}

/// A proxy under test (or the upstream itself, for `Direct`).
pub struct Proxy {
    pub kind: Kind,
    pub port: u16,
    /// The HTTPS listener (same certificate for every proxy).
    pub tls_port: u16,
    /// HTTP/2 with prior knowledge: `port` where the proxy tells h2c from
    /// HTTP/1.1 on one listener (bluegreen, Caddy), a port of its own else.
    pub h2c_port: u16,
    blue: u16,
    green: u16,
    admin: u16,
    child: Option<Child>,
    env: Env,
    pub live_is_blue: bool,
    client: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts `kind` in front of the two upstream ports, blue live.
    pub fn start(kind: Kind, env: &Env, blue: u16, green: u16) -> Result<Proxy> {
        Proxy::start_as(kind, env, blue, green, false)
    }

    /// The same; `restartable` runs HAProxy in master-worker mode, whose
    /// reload passes the listening sockets on (`-W`, `expose-fd listeners`).
    pub fn start_as(
        kind: Kind,
        env: &Env,
        blue: u16,
        green: u16,
        restartable: bool,
    ) -> Result<Proxy> {
        let port = if kind == Kind::Direct {
            blue
        } else {
            free_port()?
        };
        let admin = free_port()?;
        let tls_port = free_port()?;
        let h2c_port = match kind {
            Kind::Nginx | Kind::Haproxy => free_port()?,
            _ => port,
        };
        let file = |n: &str| env.dir.join(n).display().to_string();
        let vars = vec![
            ("H2C_PORT", h2c_port.to_string()),
            ("TLS_PORT", tls_port.to_string()),
            ("CERT", file("tls.crt")),
            ("KEY", file("tls.key")),
            ("PEM", file("tls.pem")),
            ("PORT", port.to_string()),
            ("ADMIN_PORT", admin.to_string()),
            ("BLUE_PORT", blue.to_string()),
            ("GREEN_PORT", green.to_string()),
            ("LIVE_PORT", blue.to_string()),
            ("BLUE_STATE", String::new()),
            ("GREEN_STATE", "disabled".into()),
            ("WORKERS", env.workers.to_string()),
        ];
        let dir = env.dir.display().to_string();
        let child = match kind {
            Kind::Direct => None,
            Kind::Caddy => {
                let conf = render(env, "caddy.json", "caddy.json", &vars)?;
                Some(
                    pinned(&env.proxy_cpus, "caddy")
                        .args(["run", "--config"])
                        .arg(&conf)
                        // OS threads running Go code at once: one per worker.
                        .env("GOMAXPROCS", env.workers.to_string())
                        .env("XDG_DATA_HOME", env.dir.join("caddy-data"))
                        .env("XDG_CONFIG_HOME", env.dir.join("caddy-config"))
                        .stdout(Stdio::null())
                        .stderr(log_file(env, "caddy")?)
                        .spawn()
                        .context("starting caddy (bench/run installs it)")?,
                )
            }
            Kind::Bluegreen => {
                let _ = std::fs::remove_dir_all(env.dir.join("bluegreen-state"));
                let conf = render(env, "bluegreen.toml", "bluegreen.toml", &vars)?;
                Some(
                    pinned(&env.proxy_cpus, &env.bluegreen.display().to_string())
                        .args(["serve", "--config"])
                        .arg(&conf)
                        .env("BLUEGREEN_BENCH_TOKEN", "bench")
                        .env("RUST_LOG", "error")
                        .stdout(Stdio::null())
                        .stderr(log_file(env, "bluegreen")?)
                        .spawn()
                        .context("starting bluegreen")?,
                )
            }
            Kind::Nginx => {
                render(env, "nginx-live.conf", "nginx-live.conf", &vars)?;
                let conf = render(env, "nginx.conf", "nginx.conf", &vars)?;
                let mut cmd = pinned(&env.proxy_cpus, "nginx");
                cmd.args(["-p", &dir, "-c"]).arg(&conf);
                // A binary upgrade works only for a daemon: in the
                // foreground nginx ignores USR2. Restartable, it
                // daemonizes; its master is found by the pid file.
                if !restartable {
                    cmd.args(["-g", "daemon off;"]);
                }
                Some(
                    cmd.stdout(Stdio::null())
                        .spawn()
                        .context("starting nginx")?,
                )
            }
            Kind::Haproxy => {
                let conf = render(env, "haproxy.cfg", "haproxy.cfg", &vars)?;
                let mut cmd = pinned(&env.proxy_cpus, "haproxy");
                if restartable {
                    cmd.arg("-W");
                }
                Some(
                    cmd.args(["-f"])
                        .arg(&conf)
                        .args(["-db"])
                        .stdout(Stdio::null())
                        .stderr(log_file(env, "haproxy")?)
                        .spawn()
                        .context("starting haproxy")?,
                )
            }
        };
        if let Err(e) = wait_listening(port, kind.name()) {
            let log = std::fs::read_to_string(env.dir.join(format!("{}.stderr", kind.name())))
                .unwrap_or_default();
            bail!("{e}; its stderr:\n{log}");
        }
        if kind != Kind::Direct {
            wait_listening(tls_port, "its HTTPS listener")?;
        }
        let mut p = Proxy {
            kind,
            port,
            tls_port,
            h2c_port,
            blue,
            green,
            admin,
            child,
            env: env.clone(),
            live_is_blue: true,
            client: None,
        };
        if kind == Kind::Bluegreen {
            wait_listening(admin, "bluegreen admin")?;
            p.client = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            );
            // Both sides healthy before measuring, so switches are never refused.
            let deadline = Instant::now() + Duration::from_secs(15);
            while p
                .bluegreen_call("GET", "/api/v1/status", "")?
                .matches("\"health\":\"healthy\"")
                .count()
                < 2
            {
                if Instant::now() > deadline {
                    bail!("bluegreen upstreams did not become healthy");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(p)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// One call to Caddy's admin API.
    pub fn caddy_call(&self, method: &str, path: &str, body: &str) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.admin,
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        if !out.starts_with("HTTP/1.1 200") {
            bail!("caddy {method} {path}: {out}");
        }
        Ok(out)
    }

    pub fn bluegreen_call(&self, method: &str, path: &str, body: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        let rt = self.client.as_ref().expect("bluegreen client");
        rt.block_on(async {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let req = http::Request::builder()
                .method(method)
                .uri(url)
                .header("authorization", "Bearer bench")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                bail!("bluegreen {path}: {status} {text}");
            }
            Ok(text)
        })
    }

    /// Makes the other side live, the way this proxy does it.
    pub fn switch(&mut self) -> Result<()> {
        let to_blue = !self.live_is_blue;
        match self.kind {
            Kind::Direct => bail!("direct has nothing to switch"),
            Kind::Bluegreen => {
                let side = if to_blue { "blue" } else { "green" };
                self.bluegreen_call("POST", "/api/v1/switch", &format!("{{\"to\":\"{side}\"}}"))?;
            }
            Kind::Nginx => {
                let port = if to_blue { self.blue } else { self.green };
                let conf = format!("upstream live {{ server 127.0.0.1:{port}; keepalive 256; }}\n");
                let tmp = self.env.dir.join("nginx-live.conf.tmp");
                std::fs::write(&tmp, conf)?;
                std::fs::rename(&tmp, self.env.dir.join("nginx-live.conf"))?;
                let pid = self.child.as_ref().expect("nginx").id();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGHUP,
                )?;
            }
            Kind::Caddy => {
                // Its admin API: a PATCH of each server's upstream list
                // (Caddy applies any config change as a graceful reload).
                let port = if to_blue { self.blue } else { self.green };
                let body = format!("[{{\"dial\":\"127.0.0.1:{port}\"}}]");
                for id in ["live", "live_tls"] {
                    self.caddy_call("PATCH", &format!("/id/{id}/upstreams"), &body)?;
                }
            }
            Kind::Haproxy => {
                let (up, down) = if to_blue {
                    ("blue", "green")
                } else {
                    ("green", "blue")
                };
                haproxy_cmd(&self.env.dir, &format!("set server live/{up} state ready"))?;
                haproxy_cmd(
                    &self.env.dir,
                    &format!("set server live/{down} state maint"),
                )?;
            }
        }
        self.live_is_blue = to_blue;
        Ok(())
    }

    /// Restarts the proxy the way `how` says, while it serves.
    pub fn restart(&mut self, how: How) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let signal =
            |pid: i32, sig: Signal| kill(Pid::from_raw(pid), sig).map_err(anyhow::Error::from);
        match how {
            How::BluegreenUpgrade => {
                self.bluegreen_call("POST", "/api/v1/upgrade", "")?;
            }
            How::NginxReload => signal(self.master()?, Signal::SIGHUP)?,
            How::NginxBinaryUpgrade => {
                let old = self.master()?;
                signal(old, Signal::SIGUSR2)?;
                // The new master writes nginx.pid once it runs; then the
                // old one's workers stop gracefully, then the old master.
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.master().ok().filter(|p| *p != old).is_none() {
                    if Instant::now() > deadline {
                        bail!("nginx: no new master after USR2");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                signal(old, Signal::SIGWINCH)?;
                signal(old, Signal::SIGQUIT)?;
            }
            How::HaproxyReload => {
                let pid = self.child.as_ref().expect("haproxy").id() as i32;
                signal(pid, Signal::SIGUSR2)?;
            }
            How::CaddyLoad => {
                let conf = std::fs::read_to_string(self.env.dir.join("caddy.json"))?;
                self.caddy_call("POST", "/load", &conf)?;
            }
        }
        Ok(())
    }

    /// Stops the processes a restart left behind: bluegreen's successors
    /// (children of earlier ones) and nginx's new master.
    pub fn stop_successors(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let first = self.child.as_ref().map(|c| c.id() as i32);
        match self.kind {
            Kind::Bluegreen => {
                let config = self.env.dir.join("bluegreen.toml").display().to_string();
                for pid in processes_with(&config) {
                    if Some(pid) != first {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            Kind::Nginx => {
                if let Ok(pid) = self.master() {
                    if Some(pid) != first {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
                    }
                }
            }
            _ => {}
        }
    }

    /// The nginx master's pid, from its pid file.
    fn master(&self) -> Result<i32> {
        Ok(std::fs::read_to_string(self.env.dir.join("nginx.pid"))?
            .trim()
            .parse()?)
    }

    /// Root pids of the proxy (nginx: the master; its workers are found by parent).
    fn pids(&self) -> Vec<u32> {
        let Some(c) = &self.child else {
            return Vec::new();
        };
        let root = c.id();
        let mut pids = vec![root];
        // taskset execs, so the child pid is the program itself; add children (nginx workers).
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Some(ppid) = stat_field(pid, 1) {
                    if ppid == root as u64 {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }

    /// Resident memory of the proxy's processes, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|p| status_kib(*p, "VmRSS:"))
            .sum()
    }

    /// CPU ticks (1/100 s) in user space and in the kernel, all processes.
    pub fn cpu_ticks_split(&self) -> (u64, u64) {
        self.pids().iter().fold((0, 0), |(u, s), p| {
            (
                u + stat_field(*p, 11).unwrap_or(0),
                s + stat_field(*p, 12).unwrap_or(0),
            )
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let sig = if self.kind == Kind::Nginx {
                nix::sys::signal::Signal::SIGQUIT
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// One HAProxy runtime API command over its admin socket.
fn haproxy_cmd(dir: &Path, cmd: &str) -> Result<String> {
    let mut s = UnixStream::connect(dir.join("haproxy.sock")).context("haproxy admin socket")?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Field `n` (0-based, after the command name) of `/proc/PID/stat`.
pub(crate) fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n)?.parse().ok()
}

pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How a proxy is restarted.
#[derive(Debug, Clone, Copy)]
pub enum How {
    BluegreenUpgrade,
    NginxBinaryUpgrade,
    NginxReload,
    /// Caddy's admin API: `POST /load` of the whole config (a graceful reload).
    CaddyLoad,
    HaproxyReload,
}

impl How {
    pub(crate) fn name(self) -> &'static str {
        match self {
            How::BluegreenUpgrade => "`bluegreen upgrade` (new process, same sockets)",
            How::NginxBinaryUpgrade => "binary upgrade (USR2, WINCH, QUIT)",
            How::NginxReload => "`nginx -s reload` (HUP)",
            How::HaproxyReload => "master-worker reload (USR2, `expose-fd listeners`)",
            How::CaddyLoad => "admin API `POST /load` (config reload)",
        }
    }
}
