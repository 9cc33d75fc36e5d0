//! Real etcd servers for tests and benchmarks (feature `testing`): each in
//! a temp dir on free loopback ports, stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member (or a single-member cluster).
pub struct EtcdServer {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    cluster: String,
    state: &'static str,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Free loopback ports from a span below the kernel's ephemeral range
/// (32768 and up by default): a port-0 pick can become the local end of a
/// parallel test's outgoing connection before the server meant for it binds
/// it ("Address already in use"). Each process starts at an offset of its
/// own (by pid) and walks on, skipping ports something holds. Spans that
/// are used together must not overlap.
pub struct PortSpan {
    first: u32,
    span: u32,
    next: std::sync::atomic::AtomicU32,
}

impl PortSpan {
    pub const fn new(first: u16, span: u16) -> PortSpan {
        PortSpan {
            first: first as u32,
            span: span as u32,
            next: std::sync::atomic::AtomicU32::new(u32::MAX),
        }
    }

    /// A port nothing listens on right now.
    pub fn take(&self) -> u16 {
        use std::sync::atomic::Ordering::Relaxed;
        let start = std::process::id().wrapping_mul(7919) % self.span;
        let _ = self
            .next
            .compare_exchange(u32::MAX, start, Relaxed, Relaxed);
        for _ in 0..self.span {
            let port = (self.first + self.next.fetch_add(1, Relaxed) % self.span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!(
            "no free loopback port in {}..{}",
            self.first,
            self.first + self.span
        )
    }
}

/// etcd's own span (the e2e support takes 20000..32000 for apps).
static ETCD_PORTS: PortSpan = PortSpan::new(15_000, 5_000);

fn free_port() -> u16 {
    ETCD_PORTS.take()
}

impl EtcdServer {
    /// A single-member cluster, serving when this returns.
    pub fn start() -> EtcdServer {
        let mut all = Self::cluster(1);
        all.pop().expect("one member")
    }

    /// `n` members forming one cluster, all serving when this returns.
    pub fn cluster(n: usize) -> Vec<EtcdServer> {
        let members: Vec<(String, String, String)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("http://127.0.0.1:{}", free_port()),
                    format!("http://127.0.0.1:{}", free_port()),
                )
            })
            .collect();
        let cluster = members
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<EtcdServer> = members
            .into_iter()
            .map(|(name, client_url, peer_url)| EtcdServer {
                name,
                client_url,
                peer_url,
                cluster: cluster.clone(),
                state: "new",
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            })
            .collect();
        for s in &mut servers {
            s.spawn();
        }
        for s in &servers {
            s.wait_healthy(Duration::from_secs(20));
        }
        for s in &mut servers {
            s.state = "existing";
        }
        servers
    }

    fn spawn(&mut self) {
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", self.state])
            .args(["--initial-cluster-token", "bluegreen-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("etcd.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("etcd is installed (scripts/test installs etcd-server)");
        self.child = Some(child);
    }

    /// Waits until this member answers its health check.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let addr = self.client_url.trim_start_matches("http://").to_string();
        loop {
            if health_ok(&addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} did not become healthy within {limit:?}; log:\n{}",
                self.name,
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGKILL) and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// A bare HTTP/1.0 GET of /health, without an async runtime.
fn health_ok(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
