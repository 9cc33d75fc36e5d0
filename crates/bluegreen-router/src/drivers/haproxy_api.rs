//! HAProxy's runtime API (the `stats socket`): one command per connection,
//! its answer read to the end, and the few answers the driver reads parsed
//! here (`show map`, `show servers state`, `show stat`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the runtime API listens.
#[derive(Debug, Clone)]
pub struct Api {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Api {
    /// Runs one command; its answer, whole. An answer that is an error in
    /// HAProxy's words is returned as it is: the caller knows what a good
    /// answer looks like.
    pub async fn run(&self, command: &str) -> Result<String, String> {
        let work = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| {
                    format!(
                        "cannot reach HAProxy's runtime API at {}: {e}",
                        self.socket.display()
                    )
                })?;
            s.write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| format!("`{command}`: {e}"))?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)
                .await
                .map_err(|e| format!("`{command}`: {e}"))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                format!(
                    "`{command}` on {} got no answer within {} (router.haproxy.timeout)",
                    self.socket.display(),
                    humantime::format_duration(self.timeout)
                )
            })?
    }

    /// Runs a command whose good answer is empty; anything else is
    /// HAProxy's error.
    pub async fn quiet(&self, command: &str) -> Result<(), String> {
        let out = self.run(command).await?;
        match out.trim() {
            "" => Ok(()),
            words => Err(format!("`{command}`: {}", one_line(words))),
        }
    }
}

/// HAProxy's answer on one line.
pub fn one_line(words: &str) -> String {
    words
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The process's pid in `show info`.
pub fn pid(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// The map files `show map` lists, by the name HAProxy knows them.
pub fn maps(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let open = l.find('(')?;
            let close = open + l[open..].find(')')?;
            Some(l[open + 1..close].to_string())
        })
        .collect()
}

/// The name HAProxy knows `ours` by: the same path as written, or a path
/// to the same file.
pub fn map_name(listing: &str, ours: &Path) -> Option<String> {
    let same = |name: &str| {
        Path::new(name) == ours
            || matches!(
                (std::fs::canonicalize(name), std::fs::canonicalize(ours)),
                (Ok(a), Ok(b)) if a == b
            )
    };
    maps(listing).into_iter().find(|m| same(m))
}

/// `show map NAME`: key → value.
pub fn entries(shown: &str) -> BTreeMap<String, String> {
    shown
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let _id = parts.next()?;
            let key = parts.next()?;
            let value = parts.next()?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// `show servers state BACKEND`: each server's name and address.
pub fn servers(state: &str) -> Result<Vec<(String, SocketAddr)>, String> {
    let header = state
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .ok_or_else(|| format!("not a server state: {}", one_line(state)))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(name), Some(addr), Some(port)) = (at("srv_name"), at("srv_addr"), at("srv_port"))
    else {
        return Err(format!("unexpected server state columns: {header}"));
    };
    let mut out = Vec::new();
    for l in state.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if l.starts_with('#') || f.len() <= name.max(addr).max(port) {
            continue;
        }
        let (Ok(ip), Ok(p)) = (f[addr].parse::<IpAddr>(), f[port].parse::<u16>()) else {
            continue;
        };
        out.push((f[name].to_string(), SocketAddr::new(ip, p)));
    }
    Ok(out)
}

/// One backend's counters from `show stat` (its `BACKEND` row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStat {
    /// Answers by status class: `[_, 1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub classes: [u64; 6],
    /// Average response time of the last 1024 requests, in ms.
    pub rtime_ms: u64,
}

/// The `BACKEND` rows of `show stat` (CSV), by backend name.
pub fn stats(csv: &str) -> BTreeMap<String, BackendStat> {
    let mut lines = csv.lines().skip_while(|l| !l.starts_with("# pxname,"));
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return BTreeMap::new();
    };
    let cols: Vec<&str> = header.split(',').collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let classes = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"].map(at);
    let (Some(px), Some(sv), rtime) = (at("pxname"), at("svname"), at("rtime")) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.get(sv) != Some(&"BACKEND") {
            continue;
        }
        let num = |i: Option<usize>| {
            i.and_then(|i| f.get(i))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut stat = BackendStat {
            rtime_ms: num(rtime),
            ..BackendStat::default()
        };
        for (k, i) in classes.iter().enumerate() {
            stat.classes[k + 1] = num(*i);
        }
        out.insert(f[px].to_string(), stat);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_found_by_the_name_haproxy_knows_it() {
        let listing = "# id (file) description\n2 (/etc/haproxy/bluegreen.map) pattern loaded from file '/etc/haproxy/bluegreen.map' used by map at file 'h.cfg' line 11. curr_ver=0 next_ver=0 entry_cnt=2\n\n";
        assert_eq!(maps(listing), vec!["/etc/haproxy/bluegreen.map"]);
        assert_eq!(
            map_name(listing, Path::new("/etc/haproxy/bluegreen.map")).as_deref(),
            Some("/etc/haproxy/bluegreen.map")
        );
        assert_eq!(map_name(listing, Path::new("/etc/other.map")), None);
        let shown = "0x560bd8ccbd50 live app_blue\n0x560bd8ccbde0 idle app_green\n\n";
        let e = entries(shown);
        assert_eq!(e["live"], "app_blue");
        assert_eq!(e["idle"], "app_green");
    }

    #[test]
    fn server_addresses_are_read_by_column_name() {
        let state = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord\n4 app_green 1 g1 127.0.0.1 2 0 1 1 2 1 0 2 0 0 0 0 - 18002 -\n4 app_green 2 g2 ::1 2 0 1 1 2 1 0 2 0 0 0 0 - 18003 -\n\n";
        assert_eq!(
            servers(state).unwrap(),
            vec![
                ("g1".to_string(), "127.0.0.1:18002".parse().unwrap()),
                ("g2".to_string(), "[::1]:18003".parse().unwrap()),
            ]
        );
        assert!(servers("Can't find backend.\n")
            .unwrap_err()
            .contains("Can't find backend."));
    }

    #[test]
    fn backend_rows_of_show_stat_give_status_classes_and_response_time() {
        let csv = "# pxname,svname,req_tot,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,rtime\n\
                   web,FRONTEND,10,0,9,0,0,1,\n\
                   app_blue,b1,7,0,5,0,1,1,12\n\
                   app_blue,BACKEND,7,0,5,0,1,1,12\n\
                   app_green,BACKEND,0,0,0,0,0,0,0\n";
        let s = stats(csv);
        assert_eq!(s.len(), 2);
        assert_eq!(s["app_blue"].classes, [0, 0, 5, 0, 1, 1]);
        assert_eq!(s["app_blue"].rtime_ms, 12);
        assert_eq!(s["app_green"], BackendStat::default());
        assert!(stats("Permission denied\n").is_empty());
        // After `show info` on the same connection.
        let both = format!("Name: HAProxy\nPid: 4242\nUptime_sec: 9\n\n{csv}");
        assert_eq!(pid(&both), Some(4242));
        assert_eq!(stats(&both).len(), 2);
    }
}
