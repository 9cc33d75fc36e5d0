//! Driving the user's nginx through one include file. A switch: `nginx -t`
//! on the config as it is (someone else's broken config refuses the switch
//! and nothing is written), the file rewritten atomically with the new live
//! side's upstream block, `nginx -t` again, `nginx -s reload`, then probes
//! through a loopback server block of the same file until three answers in
//! a row came from the new side's upstreams (`$upstream_addr`, echoed in a
//! header). Any failure puts the previous file back and reloads again.

use super::{resolve, Driver, DriverError, Fut};
use crate::plane::Plane;
use bluegreen_core::config::router::NginxConfig;
use bluegreen_core::config::Config;
use bluegreen_core::Side;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Answers in a row from the new side that confirm a switch.
const CONFIRMATIONS: usize = 3;

/// The header the probe server block adds: the upstream that answered.
const UPSTREAM_HEADER: &str = "x-bluegreen-upstream";

/// The user's nginx.
pub struct Nginx {
    cfg: NginxConfig,
}

impl Driver for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn apply<'a>(&'a self, config: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>> {
        Box::pin(self.switch(config, live))
    }

    fn start<'a>(&'a self, config: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>> {
        Box::pin(self.begin(config, live))
    }

    /// nginx's JSON access log, when `router.nginx.access_log` names it.
    fn follow(&self, plane: Arc<Plane>, stop: CancellationToken) {
        if let Some(path) = &self.cfg.access_log {
            super::nginx_log::spawn(plane, path.clone(), self.cfg.upstream.clone(), stop);
        }
    }
}

impl Nginx {
    pub fn new(cfg: NginxConfig) -> Nginx {
        Nginx { cfg }
    }

    fn error(&self, message: String) -> DriverError {
        DriverError {
            router: "nginx",
            message,
        }
    }

    /// A switch: checked, written, checked, reloaded, confirmed; any
    /// failure puts the previous file back.
    async fn switch(&self, config: &Config, live: Side) -> Result<String, DriverError> {
        let started = Instant::now();
        let before = self.current().await.map_err(|e| self.error(e))?;
        // A config that already fails is someone else's change: nothing of
        // ours is written over it.
        if before.is_some() {
            if let Err(e) = self.test().await {
                return Err(self.error(format!(
                    "the config does not pass `nginx -t` before bluegreen's change, so nothing was written: {e}"
                )));
            }
        }
        self.write(&self.render(config, live))
            .await
            .map_err(|e| self.error(e))?;
        // No file before (deleted since the start): the way back is the
        // file for the side that was live.
        let before = before.or_else(|| Some(self.render(config, live.other())));
        if let Err(e) = self.test().await {
            let back = self.put_back(before.as_deref(), false).await;
            return Err(self.error(format!(
                "the new file does not pass `nginx -t`: {e}; {back}"
            )));
        }
        let old = self.workers().await;
        if let Err(e) = self.reload().await {
            let back = self.put_back(before.as_deref(), true).await;
            return Err(self.error(format!("`nginx -s reload` failed: {e}; {back}")));
        }
        match self.confirm(config, live, old.as_deref()).await {
            Ok(()) => Ok(format!(
                "nginx serves {live} (reloaded and confirmed by {CONFIRMATIONS} probes in {} ms{})",
                started.elapsed().as_millis(),
                if old.is_none() {
                    "; its old workers could not be found, so only the probes confirm it"
                } else {
                    ""
                }
            )),
            Err(e) => {
                let back = self.put_back(before.as_deref(), true).await;
                Err(self.error(format!("{e}; {back}")))
            }
        }
    }

    /// At start: nginx is given the live side of the state. Not running
    /// yet is fine (it reads the file when it starts).
    async fn begin(&self, config: &Config, live: Side) -> Result<String, DriverError> {
        let before = self.current().await.map_err(|e| self.error(e))?;
        let text = self.render(config, live);
        if before.as_deref() != Some(text.as_str()) {
            self.write(&text).await.map_err(|e| self.error(e))?;
        }
        if let Err(e) = self.test().await {
            let back = self.put_back(before.as_deref(), false).await;
            return Err(self.error(format!(
                "`nginx -t` fails with bluegreen's file: {e}; {back}"
            )));
        }
        let old = self.workers().await;
        if let Err(e) = self.reload().await {
            // Not running: it reads the file when it starts. Running and
            // not reloaded: it serves what it served.
            if old.is_some() {
                return Err(self.error(format!("nginx runs, and `nginx -s reload` failed: {e}")));
            }
            return Ok(format!(
                "{} written for {live}; nginx was not reloaded ({e}): it reads the file when it starts",
                self.cfg.include.display()
            ));
        }
        self.confirm(config, live, old.as_deref())
            .await
            .map_err(|e| self.error(e))?;
        Ok(format!("nginx serves {live} (confirmed at start)"))
    }

    /// The include file for `live`: the user's upstream block with the live
    /// side's addresses, the probe server, and the preview server.
    pub fn render(&self, config: &Config, live: Side) -> String {
        let name = &self.cfg.upstream;
        let servers = |side: Side| -> String {
            config.environments[side]
                .upstreams
                .iter()
                .map(|u| format!("    server {u};\n"))
                .collect()
        };
        let pass = "        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n";
        let mut out = format!(
            "# Written by bluegreen at each switch (router.nginx.include); edits are overwritten.\n\
             # live: {live}\n\
             # For the judge: `access_log PATH bluegreen;` in your server, PATH = router.nginx.access_log.\n\
             {}\n\n\
             upstream {name} {{\n{}    keepalive 16;\n}}\n\n\
             # bluegreen's probe: the upstream that answered, to confirm a switch.\n\
             server {{\n    listen {};\n    access_log off;\n    location / {{\n        proxy_pass http://{name};\n{pass}        add_header X-Bluegreen-Upstream $upstream_addr always;\n    }}\n}}\n",
            super::nginx_log::LOG_FORMAT,
            servers(live),
            self.cfg.probe_listen,
        );
        if let Some(preview) = self.cfg.preview_listen {
            out.push_str(&format!(
                "\n# The idle side ({}), for smoke tests and previews.\n\
                 upstream {name}_idle {{\n{}    keepalive 16;\n}}\n\
                 server {{\n    listen {preview};\n    access_log off;\n    location / {{\n        proxy_pass http://{name}_idle;\n{pass}        proxy_set_header Host $host;\n    }}\n}}\n",
                live.other(),
                servers(live.other()),
            ));
        }
        out
    }

    /// `nginx -t -c CONFIG`; the error is nginx's own words.
    async fn test(&self) -> Result<(), String> {
        self.run(&["-t", "-c"]).await
    }

    /// `nginx -s reload -c CONFIG`: signals the master the config's `pid`
    /// names.
    async fn reload(&self) -> Result<(), String> {
        self.run(&["-s", "reload", "-c"]).await
    }

    async fn run(&self, args: &[&str]) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.args(args)
            .arg(&self.cfg.config)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(self.cfg.reload_timeout, cmd.output())
            .await
            .map_err(|_| {
                format!(
                    "`{} {}` did not finish within {}",
                    self.cfg.binary,
                    args.join(" "),
                    humantime::format_duration(self.cfg.reload_timeout)
                )
            })?
            .map_err(|e| format!("cannot run {}: {e}", self.cfg.binary))?;
        if out.status.success() {
            return Ok(());
        }
        Err(nginx_words(&String::from_utf8_lossy(&out.stderr)))
    }

    /// The include file as it is; `None` when there is none.
    async fn current(&self) -> Result<Option<String>, String> {
        super::read_ours(&self.cfg.include).await
    }

    /// Writes the include file atomically.
    async fn write(&self, text: &str) -> Result<(), String> {
        super::write_ours(&self.cfg.include, text).await
    }

    /// The previous file back (none: removed), reloaded when nginx had
    /// been reloaded with ours; a sentence saying what was done.
    async fn put_back(&self, before: Option<&str>, reload: bool) -> String {
        let restored = match before {
            Some(text) => self.write(text).await,
            None => tokio::fs::remove_file(&self.cfg.include)
                .await
                .map_err(|e| e.to_string()),
        };
        match (restored, reload) {
            (Err(e), _) => format!(
                "putting the previous {} back failed too: {e}",
                self.cfg.include.display()
            ),
            (Ok(()), false) => "the previous file is back; nothing changed".into(),
            (Ok(()), true) => match self.reload().await {
                Ok(()) => "the previous file is back and nginx reloaded with it".into(),
                Err(e) => format!("the previous file is back, but reloading nginx failed: {e}"),
            },
        }
    }

    /// The running master's worker processes (its pid from the `pid` file
    /// the config names, found with `nginx -T`); `None` when no running
    /// master can be found.
    async fn workers(&self) -> Option<Vec<u32>> {
        let pid_file = self.pid_file().await?;
        let text = tokio::fs::read_to_string(&pid_file).await.ok()?;
        let master = text.trim().parse::<u32>().ok()?;
        tokio::task::spawn_blocking(move || {
            Path::new(&format!("/proc/{master}"))
                .exists()
                .then(|| children(master))
        })
        .await
        .ok()
        .flatten()
    }

    /// The `pid` directive of the whole config (`nginx -T`), else nginx's
    /// built-in path (`nginx -V`).
    async fn pid_file(&self) -> Option<String> {
        let out = |args: &'static [&'static str]| {
            let mut cmd = tokio::process::Command::new(&self.cfg.binary);
            cmd.args(args).kill_on_drop(true);
            async move {
                let o = tokio::time::timeout(Duration::from_secs(5), cmd.output())
                    .await
                    .ok()?
                    .ok()?;
                Some(format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
        };
        let mut t = tokio::process::Command::new(&self.cfg.binary);
        t.arg("-T")
            .arg("-c")
            .arg(&self.cfg.config)
            .kill_on_drop(true);
        let dump = tokio::time::timeout(Duration::from_secs(5), t.output())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let version = out(&["-V"]).await.unwrap_or_default();
        let built = |key: &str| {
            version
                .split_whitespace()
                .find_map(|a| a.strip_prefix(key))
                .map(str::to_string)
        };
        let path = pid_directive(&dump).or_else(|| built("--pid-path="))?;
        // A relative path is from nginx's prefix, not from here.
        if Path::new(&path).is_absolute() {
            return Some(path);
        }
        let prefix = built("--prefix=").unwrap_or_else(|| "/usr/local/nginx".into());
        Some(Path::new(&prefix).join(path).display().to_string())
    }

    /// Probes until `CONFIRMATIONS` answers in a row came from `live`'s
    /// upstreams and every worker of the old config (`old`) is gone or
    /// shutting down, up to `reload_timeout`. Without `old` (no running
    /// master found), only the probes confirm it, which the log says.
    async fn confirm(
        &self,
        config: &Config,
        live: Side,
        old: Option<&[u32]>,
    ) -> Result<(), String> {
        let wanted = resolve(&config.environments[live].upstreams).await;
        let deadline = Instant::now() + self.cfg.reload_timeout;
        if old.is_none() {
            tracing::warn!(
                "nginx's master was not found (its pid file, from `nginx -T`): a switch is confirmed by probes only, and an old worker may still take a connection for a moment"
            );
        }
        loop {
            let old = old.unwrap_or_default().to_vec();
            let serving = tokio::task::spawn_blocking(move || still_accepting(&old))
                .await
                .unwrap_or_default();
            if serving.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the workers of nginx's previous config ({serving:?}) still accept connections after {} (router.nginx.reload_timeout)",
                    humantime::format_duration(self.cfg.reload_timeout)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (mut row, mut last) = (0, String::from("no answer"));
        while Instant::now() < deadline {
            match probe(self.cfg.probe_listen, &config.health.path).await {
                Ok(addr) if wanted.contains(&addr) => {
                    row += 1;
                    if row == CONFIRMATIONS {
                        return Ok(());
                    }
                    continue;
                }
                Ok(addr) => last = format!("answered by {addr}, not {live}"),
                Err(e) => last = e,
            }
            row = 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "nginx did not serve {live} within {} (router.nginx.reload_timeout); last probe of {}: {last}",
            humantime::format_duration(self.cfg.reload_timeout),
            self.cfg.probe_listen
        ))
    }
}

/// The path of a `pid` directive in `nginx -T`'s dump.
fn pid_directive(dump: &str) -> Option<String> {
    dump.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        let rest = l.strip_prefix("pid")?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let value = rest.trim().trim_end_matches(';').trim();
        Some(value.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// The processes whose parent is `master` (Linux `/proc`).
fn children(master: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // `pid (comm) state ppid ...`: comm may hold spaces.
                    let after = &s[s.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(master)
        })
        .collect()
}

/// Those of `workers` still alive and not yet shutting down: an nginx
/// worker renames itself "worker process is shutting down" as it closes
/// its listening sockets.
fn still_accepting(workers: &[u32]) -> Vec<u32> {
    workers
        .iter()
        .copied()
        .filter(|pid| match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(c) => {
                let title = String::from_utf8_lossy(&c);
                title.contains("worker process") && !title.contains("shutting down")
            }
            Err(_) => false,
        })
        .collect()
}

/// nginx's own error lines (`[emerg] ...`), without its boilerplate.
fn nginx_words(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("[error]"))
        .collect();
    if lines.is_empty() {
        stderr.trim().replace('\n', "; ")
    } else {
        lines.join("; ")
    }
}

/// One request through the probe server: the upstream that answered.
async fn probe(at: SocketAddr, path: &str) -> Result<SocketAddr, String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(at)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: bluegreen-probe\r\nUser-Agent: bluegreen-probe\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        upstream_of(&String::from_utf8_lossy(&head))
    };
    tokio::time::timeout(Duration::from_secs(1), work)
        .await
        .map_err(|_| "no answer within 1 s".to_string())?
}

/// The last upstream `$upstream_addr` names (after retries: `a, b`; after
/// an internal redirect: `a : b`).
fn upstream_of(head: &str) -> Result<SocketAddr, String> {
    let value = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(UPSTREAM_HEADER)
                .then(|| v.trim())
        })
        .ok_or_else(|| {
            let status = head.lines().next().unwrap_or("").trim();
            format!("no upstream named in the answer ({status:?})")
        })?;
    let last = value
        .rsplit([',', ' '])
        .find(|t| !t.is_empty() && *t != ":")
        .unwrap_or(value);
    last.parse()
        .map_err(|_| format!("{UPSTREAM_HEADER} {value:?} is not an address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_that_answered_is_read_from_the_probe_header() {
        let head =
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Bluegreen-Upstream: 127.0.0.1:9001\r\n\r\n";
        assert_eq!(upstream_of(head), Ok("127.0.0.1:9001".parse().unwrap()));
        let retried = "HTTP/1.1 502 Bad Gateway\r\nx-bluegreen-upstream: 127.0.0.1:9001, 127.0.0.1:9002\r\n\r\n";
        assert_eq!(upstream_of(retried), Ok("127.0.0.1:9002".parse().unwrap()));
        let redirected =
            "HTTP/1.1 200 OK\r\nX-Bluegreen-Upstream: 127.0.0.1:9001 : [::1]:9003\r\n\r\n";
        assert_eq!(upstream_of(redirected), Ok("[::1]:9003".parse().unwrap()));
        let none = "HTTP/1.1 404 Not Found\r\nServer: nginx\r\n\r\n";
        assert!(upstream_of(none)
            .unwrap_err()
            .contains("HTTP/1.1 404 Not Found"));
    }

    #[test]
    fn the_pid_file_is_read_from_the_config_dump() {
        let dump = "# configuration file /etc/nginx/nginx.conf:\nuser www-data;\npid /run/nginx.pid;\nevents {}\n";
        assert_eq!(pid_directive(dump).as_deref(), Some("/run/nginx.pid"));
        assert_eq!(pid_directive("pidfoo x;\nevents {}\n"), None);
        let quoted = "pid \"/run/my nginx.pid\"; # where the master writes it\n";
        assert_eq!(pid_directive(quoted).as_deref(), Some("/run/my nginx.pid"));
    }

    #[test]
    fn nginx_errors_keep_its_own_words_without_the_boilerplate() {
        let stderr = "nginx: [emerg] unknown directive \"bogus\" in /etc/nginx/nginx.conf:12\nnginx: configuration file /etc/nginx/nginx.conf test failed\n";
        assert_eq!(
            nginx_words(stderr),
            "nginx: [emerg] unknown directive \"bogus\" in /etc/nginx/nginx.conf:12"
        );
    }
}
