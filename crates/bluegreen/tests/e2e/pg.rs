//! A real PostgreSQL server for one test: `initdb` in a temp dir and
//! `postgres` on a free loopback port, as the `postgres` (or `nobody`) user
//! when the tests run as root (PostgreSQL refuses to run as root).

use crate::support::wait_until;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PgServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's bin directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): scripts/test installs the Debian package postgresql")
}

/// Who runs the server: ourselves, or an unprivileged user when we are root.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["postgres", "nobody"].iter().find_map(|name| {
        let u = nix::unistd::User::from_name(name).ok()??;
        Some((u.uid.as_raw(), u.gid.as_raw()))
    })
}

fn command(program: PathBuf, owner: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = owner {
        c.uid(uid).gid(gid);
    }
    c
}

impl PgServer {
    pub async fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(
                dir.path(),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .unwrap();
        }
        let data = dir.path().join("data");
        let out = command(bin.join("initdb"), owner)
            .args([
                "-A",
                "trust",
                "-U",
                "bluegreen",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::support::closed_port().port();
        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).unwrap();
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(
                &log,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .unwrap();
        }
        let child = command(bin.join("postgres"), owner)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let server = PgServer {
            child,
            port,
            log,
            _dir: dir,
        };
        let url = server.url();
        wait_until(
            Duration::from_secs(30),
            "PostgreSQL accepts connections",
            || {
                let url = url.clone();
                async move {
                    tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://bluegreen@127.0.0.1:{}/postgres", self.port)
    }

    /// A connection of the test's own.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}; log: {}", self.log()));
        tokio::spawn(conn);
        client
    }

    /// The columns of `table`, in order.
    pub async fn columns(&self, table: &str) -> Vec<String> {
        self.client()
            .await
            .query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// `name phase version` of each row of our tracking table.
    pub async fn applied(&self) -> Vec<String> {
        self.client()
            .await
            .query(
                "SELECT name || ' ' || phase || ' ' || version FROM bluegreen_migrations ORDER BY name, phase DESC",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Fast shutdown: the server ends its backends and exits.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
