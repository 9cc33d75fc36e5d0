//! nginx's own traffic, for the judge: the JSON access log the user's
//! server writes with bluegreen's `log_format` (defined in the include),
//! followed as it grows (rotation-safe: a new file, or one truncated, is
//! read from its start), each line counted for the side whose upstream
//! answered it. The bake then judges nginx's traffic exactly as it judges
//! bluegreen's own.

use crate::plane::Plane;
use bluegreen_core::Side;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(100);

/// The `log_format` bluegreen defines in the include, named `bluegreen`.
pub const LOG_FORMAT: &str = r#"log_format bluegreen escape=json '{"status":"$status","upstream_addr":"$upstream_addr","upstream_header_time":"$upstream_header_time"}';"#;

/// One line of the log.
#[derive(serde::Deserialize)]
struct Line {
    status: String,
    upstream_addr: String,
    upstream_header_time: String,
}

/// Follows `path` on a thread of its own (file reads and name lookups
/// block) until `stop`. `upstream` is the name of the live side's upstream
/// block (`NAME_idle` the idle side's).
pub fn spawn(plane: Arc<Plane>, path: PathBuf, upstream: String, stop: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("nginx-log".into())
        .spawn(move || follow(&plane, &path, &upstream, &stop));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "nginx's access log is not followed: its traffic is not judged");
    }
}

fn follow(plane: &Plane, path: &Path, upstream: &str, stop: &CancellationToken) {
    let mut tail = Tail::at_end(path);
    let mut sides = Sides {
        upstream: upstream.to_string(),
        ..Sides::default()
    };
    let mut warned = false;
    while !stop.is_cancelled() {
        sides.refresh(plane);
        match tail.lines() {
            Ok(lines) => {
                warned = false;
                for l in lines {
                    count(plane, &sides, &l);
                }
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(path = %path.display(), error = %e, "nginx's access log cannot be read: its traffic is not counted until it can");
            }
            Err(_) => {}
        }
        std::thread::sleep(POLL);
    }
}

/// Counts one line for the side whose upstream answered it (the last one
/// named, after nginx's own retries). A client that hung up (nginx's 499)
/// is not counted, as bluegreen's own proxy counts nothing then.
fn count(plane: &Plane, sides: &Sides, text: &str) {
    let Ok(line) = serde_json::from_str::<Line>(text) else {
        return;
    };
    let Ok(status) = line.status.parse::<u16>() else {
        return;
    };
    if status == 499 {
        return;
    }
    let Some(side) = last(&line.upstream_addr).and_then(|a| sides.of(a, plane.live())) else {
        return;
    };
    let snap = plane.snapshot.load();
    let stats = &snap.pools[side].live_stats;
    match last(&line.upstream_header_time).and_then(|t| t.parse::<f64>().ok()) {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            stats.record(status, Duration::from_secs_f64(secs))
        }
        _ => stats.record_untimed(status),
    }
}

/// The last of nginx's list (`a, b` after a retry, `a : b` after an
/// internal redirect); `None` for `-`.
fn last(list: &str) -> Option<&str> {
    list.rsplit([',', ' '])
        .find(|t| !t.is_empty() && *t != ":")
        .filter(|t| *t != "-")
}

/// Which side an upstream address belongs to, from the config (looked up
/// again every few seconds: a reload may change the lists).
#[derive(Default)]
struct Sides {
    by_addr: HashMap<SocketAddr, Side>,
    at: Option<Instant>,
    /// The live side's upstream block: nginx names the block, not an
    /// address, when every server of it is marked failed (its 502s count).
    upstream: String,
}

impl Sides {
    fn refresh(&mut self, plane: &Plane) {
        if self
            .at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        let config = plane.config();
        let mut by_addr = HashMap::new();
        for side in Side::ALL {
            for u in &config.environments[side].upstreams {
                if let Ok(addrs) = u.as_str().to_socket_addrs() {
                    by_addr.extend(addrs.map(|a| (a, side)));
                }
            }
        }
        self.by_addr = by_addr;
        self.at = Some(Instant::now());
    }

    /// The side `name` (an address, or an upstream block's name) is of.
    fn of(&self, name: &str, live: Side) -> Option<Side> {
        if name == self.upstream {
            return Some(live);
        }
        if name.strip_suffix("_idle") == Some(self.upstream.as_str()) {
            return Some(live.other());
        }
        self.by_addr.get(&name.parse::<SocketAddr>().ok()?).copied()
    }
}

/// A file followed as it grows.
struct Tail {
    path: PathBuf,
    file: Option<std::fs::File>,
    inode: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Starts at the end of the file as it is now: only new traffic counts.
    fn at_end(path: &Path) -> Tail {
        let mut t = Tail {
            path: path.to_path_buf(),
            file: None,
            inode: 0,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(f) = std::fs::File::open(path) {
            if let Ok(m) = f.metadata() {
                t.inode = m.ino();
                t.pos = m.len();
                t.file = Some(f);
            }
        }
        t
    }

    /// The whole lines written since the last call.
    fn lines(&mut self) -> std::io::Result<Vec<String>> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // Rotated away and not created again yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.file.is_some() => {
                return self.read_more()
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        // A new file (rotated) or one cut short (copytruncate): from its
        // start, once what the old one still had is read.
        if self.file.is_none() || meta.ino() != self.inode || meta.len() < self.pos {
            if self.file.is_some() && meta.ino() != self.inode {
                out = self.read_more()?;
            }
            let f = std::fs::File::open(&self.path)?;
            self.inode = f.metadata()?.ino();
            self.file = Some(f);
            self.pos = 0;
            self.partial.clear();
        }
        out.extend(self.read_more()?);
        Ok(out)
    }

    /// The whole lines the open file has beyond `pos`.
    fn read_more(&mut self) -> std::io::Result<Vec<String>> {
        let Some(f) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        // At most 16 MiB a poll: a huge backlog is read over several.
        f.take(16 << 20).read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            // Not a log of ours (no line ends): never held without bound.
            if self.partial.len() > 1 << 20 {
                self.partial.clear();
            }
            return Ok(Vec::new());
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        Ok(String::from_utf8_lossy(&whole)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_request_is_the_side_of_its_upstream_or_of_its_block() {
        let mut sides = Sides {
            upstream: "app".into(),
            ..Sides::default()
        };
        sides
            .by_addr
            .insert("127.0.0.1:9001".parse().unwrap(), Side::Blue);
        sides
            .by_addr
            .insert("127.0.0.1:9002".parse().unwrap(), Side::Green);
        assert_eq!(sides.of("127.0.0.1:9002", Side::Blue), Some(Side::Green));
        assert_eq!(
            sides.of("app", Side::Green),
            Some(Side::Green),
            "every server failed: the live side's 502"
        );
        assert_eq!(sides.of("app_idle", Side::Green), Some(Side::Blue));
        assert_eq!(sides.of("127.0.0.1:9999", Side::Blue), None);
        assert_eq!(sides.of("other", Side::Blue), None);
    }

    #[test]
    fn the_last_upstream_and_time_are_read_and_a_dash_is_none() {
        assert_eq!(last("127.0.0.1:9001"), Some("127.0.0.1:9001"));
        assert_eq!(
            last("127.0.0.1:9001, 127.0.0.1:9002"),
            Some("127.0.0.1:9002")
        );
        assert_eq!(last("127.0.0.1:9001 : [::1]:9003"), Some("[::1]:9003"));
        assert_eq!(last("-"), None);
        assert_eq!(last("0.004, 0.002"), Some("0.002"));
    }

    #[test]
    fn lines_are_read_whole_and_a_rotated_or_truncated_file_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let mut tail = Tail::at_end(&path);
        assert!(
            tail.lines().unwrap().is_empty(),
            "what was there before is not counted"
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"a\":1}\n{\"b\":").unwrap();
        assert_eq!(tail.lines().unwrap(), ["{\"a\":1}"]);
        f.write_all(b"2}\n").unwrap();
        assert_eq!(
            tail.lines().unwrap(),
            ["{\"b\":2}"],
            "a line written in two parts is one line"
        );
        // Rotated: moved away (nginx still writes there until it reopens),
        // a new file in its place: the old one's last lines, then the new.
        std::fs::rename(&path, dir.path().join("access.json.1")).unwrap();
        f.write_all(b"{\"late\":1}\n").unwrap();
        std::fs::write(&path, "{\"c\":3}\n").unwrap();
        assert_eq!(tail.lines().unwrap(), ["{\"late\":1}", "{\"c\":3}"]);
        // Truncated in place (copytruncate), then written again.
        std::fs::write(&path, "").unwrap();
        assert!(tail.lines().unwrap().is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"d\":4}\n").unwrap();
        assert_eq!(tail.lines().unwrap(), ["{\"d\":4}"]);
    }
}
