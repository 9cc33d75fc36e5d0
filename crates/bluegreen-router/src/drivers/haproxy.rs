//! Driving the user's HAProxy through one map file. The user's frontend
//! picks its backend from the map (`use_backend
//! %[str(live),map(MAP,BACKEND_blue)]`); a switch checks the config as it is
//! (`haproxy -c`: someone else's broken config refuses the switch and
//! nothing is written), checks that the running HAProxy uses the map and
//! that each side's backend holds that side's upstreams, writes the map
//! file atomically (what a reload reads: HAProxy forgets runtime changes at
//! a reload, #199, #2085), then changes the running HAProxy in one atomic
//! commit (`prepare map` / `add map @V` / `commit map @V`: every request
//! after it takes the new backend, none sees a half-made map), and reads
//! the entry back. Any failure puts the previous file and entries back.
//!
//! Why a map and not `set server ... state` pairs: those apply one server
//! at a time, so for a moment both sides (wrong-side answers) or neither
//! (503s) would serve; one map commit has no such moment.

use super::haproxy_api::{self, Api};
use super::haproxy_stats::Counters;
use super::{resolve, Driver, DriverError, Fut};
use crate::plane::Plane;
use bluegreen_core::config::router::HaproxyConfig;
use bluegreen_core::config::Config;
use bluegreen_core::Side;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The user's HAProxy.
pub struct Haproxy {
    cfg: HaproxyConfig,
    api: Api,
    counters: Arc<Counters>,
}

impl Driver for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn apply<'a>(&'a self, config: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>> {
        Box::pin(async move { self.switch(config, live).await.map_err(|e| self.error(e)) })
    }

    fn start<'a>(&'a self, config: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>> {
        Box::pin(async move { self.begin(config, live).await.map_err(|e| self.error(e)) })
    }

    fn follow(&self, plane: Arc<Plane>, stop: CancellationToken) {
        self.counters.clone().spawn(plane, stop);
    }
}

impl Haproxy {
    pub fn new(cfg: HaproxyConfig) -> Haproxy {
        let api = Api {
            socket: cfg.socket.clone(),
            timeout: cfg.timeout,
        };
        let counters = Arc::new(Counters::new(cfg.clone()));
        Haproxy { cfg, api, counters }
    }

    fn error(&self, message: String) -> DriverError {
        DriverError {
            router: "haproxy",
            message,
        }
    }

    /// The map file for `live`: what a (re)started HAProxy reads.
    pub fn render(&self, live: Side) -> String {
        format!(
            "# Written by bluegreen at each switch (router.haproxy.map); edits are overwritten.\n\
             live {}\nidle {}\n",
            self.cfg.backend_of(live),
            self.cfg.backend_of(live.other()),
        )
    }

    /// A switch: checked, written, committed, read back; any failure puts
    /// the previous file and entries back.
    async fn switch(&self, config: &Config, live: Side) -> Result<String, String> {
        let started = Instant::now();
        if let Err(e) = self.check().await {
            return Err(format!(
                "the config does not pass `haproxy -c` before bluegreen's change, so nothing was written: {e}"
            ));
        }
        let map = self
            .map_name()
            .await
            .map_err(|e| format!("{e}; nothing was written"))?;
        self.same_servers(config)
            .await
            .map_err(|e| format!("{e}; nothing was written"))?;
        let worker = self.worker().await;
        let before = self.current().await?;
        if let Err(e) = self.write(&self.render(live)).await {
            let back = self.put_back(before.as_deref(), None).await;
            return Err(format!("{e}; {back}"));
        }
        if let Err(e) = self.commit(&map, live).await {
            // A commit that timed out may have been applied all the same.
            let applied = matches!(self.live_entry(&map).await, Ok(Some(b)) if b == self.cfg.backend_of(live));
            let back = self
                .put_back(
                    before.as_deref(),
                    applied.then_some((map.as_str(), live.other())),
                )
                .await;
            return Err(format!("{e}; {back}"));
        }
        // What each side answered up to now is counted before the bake's
        // baseline (best effort: a failed read leaves it to the poller).
        let _ = self.counters.poll().await;
        let mut confirmed = self.confirm(&map, live).await;
        // Someone else's reload in between: its new worker may have read
        // the file before our write; it is given the map again.
        if confirmed.is_ok() && self.worker().await != worker {
            confirmed = match self.commit(&map, live).await {
                Ok(()) => self.confirm(&map, live).await,
                Err(e) => Err(e),
            };
        }
        match confirmed {
            Ok(()) => Ok(format!(
                "haproxy serves {live} (map {map} committed and read back in {} ms)",
                started.elapsed().as_millis()
            )),
            Err(e) => {
                let back = self
                    .put_back(before.as_deref(), Some((&map, live.other())))
                    .await;
                Err(format!("{e}; {back}"))
            }
        }
    }

    /// The pid of the worker serving the runtime API (`show info`).
    async fn worker(&self) -> Option<u32> {
        let info = self.api.run("show info").await.ok()?;
        haproxy_api::pid(&info)
    }

    /// At start: the map file says the live side of the state; a running
    /// HAProxy, once its backends are checked, is given it too. One not
    /// running yet is fine (it reads the file when it starts).
    async fn begin(&self, config: &Config, live: Side) -> Result<String, String> {
        let text = self.render(live);
        let write = || async {
            if self.current().await?.as_deref() != Some(text.as_str()) {
                self.write(&text).await?;
            }
            Ok::<(), String>(())
        };
        let listing = match self.api.run("show map").await {
            Ok(l) => l,
            Err(e) => {
                write().await?;
                return Ok(format!(
                    "{} written for {live}; HAProxy was not reached ({e}): it reads the file when it starts",
                    self.cfg.map.display()
                ));
            }
        };
        let map = self.known(&listing)?;
        self.same_servers(config).await?;
        write().await?;
        let shown = self.api.run(&format!("show map {map}")).await?;
        let wanted: std::collections::BTreeMap<String, String> = [
            ("live".to_string(), self.cfg.backend_of(live)),
            ("idle".to_string(), self.cfg.backend_of(live.other())),
        ]
        .into();
        if haproxy_api::entries(&shown) != wanted {
            self.commit(&map, live).await?;
        }
        self.confirm(&map, live).await?;
        Ok(format!("haproxy serves {live} (confirmed at start)"))
    }

    /// `haproxy -c -f CONFIG`; the error is HAProxy's own words.
    async fn check(&self) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.arg("-c")
            .arg("-f")
            .arg(&self.cfg.config)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(self.cfg.timeout, cmd.output())
            .await
            .map_err(|_| {
                format!(
                    "`{} -c` did not finish within {}",
                    self.cfg.binary,
                    humantime::format_duration(self.cfg.timeout)
                )
            })?
            .map_err(|e| format!("cannot run {}: {e}", self.cfg.binary))?;
        if out.status.success() {
            return Ok(());
        }
        let words = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let alerts: Vec<&str> = words
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("[ALERT]"))
            // `[ALERT]    (PID) : config : parsing [f:2] : ...` → from `config`.
            .map(|l| l.split_once(") : ").map_or(l, |(_, rest)| rest))
            .collect();
        Err(if alerts.is_empty() {
            haproxy_api::one_line(&words)
        } else {
            alerts.join("; ")
        })
    }

    /// The name the running HAProxy knows our map by.
    async fn map_name(&self) -> Result<String, String> {
        let listing = self.api.run("show map").await?;
        self.known(&listing)
    }

    fn known(&self, listing: &str) -> Result<String, String> {
        haproxy_api::map_name(listing, &self.cfg.map).ok_or_else(|| {
            format!(
                "the running HAProxy does not use the map {} (router.haproxy.map): its frontend needs `use_backend %[str(live),map({},{})]`; the maps it uses: {:?}",
                self.cfg.map.display(),
                self.cfg.map.display(),
                self.cfg.backend_of(Side::Blue),
                haproxy_api::maps(listing),
            )
        })
    }

    /// Each side's backend holds exactly that side's upstreams: otherwise
    /// the health gate and the smoke tests would pass one app while
    /// HAProxy serves another.
    async fn same_servers(&self, config: &Config) -> Result<(), String> {
        for side in Side::ALL {
            let backend = self.cfg.backend_of(side);
            let state = self
                .api
                .run(&format!("show servers state {backend}"))
                .await?;
            if state.contains("Can't find backend") {
                return Err(format!(
                    "HAProxy has no backend {backend} (router.haproxy.backend = {:?}: the backends are {} and {})",
                    self.cfg.backend,
                    self.cfg.backend_of(Side::Blue),
                    self.cfg.backend_of(Side::Green),
                ));
            }
            let theirs: Vec<SocketAddr> = haproxy_api::servers(&state)?
                .into_iter()
                .map(|(_, a)| a)
                .collect();
            // Each upstream is one server (a name may resolve to several
            // addresses; HAProxy keeps one of them).
            let ups = &config.environments[side].upstreams;
            let mut resolved = Vec::new();
            for u in ups {
                resolved.push(resolve(std::slice::from_ref(u)).await);
            }
            let mut left: Vec<SocketAddr> = theirs.clone();
            let matched = resolved
                .iter()
                .all(|r| match left.iter().position(|a| r.contains(a)) {
                    Some(i) => {
                        left.remove(i);
                        true
                    }
                    None => false,
                });
            if !matched || !left.is_empty() {
                let ours: BTreeSet<SocketAddr> = resolved.into_iter().flatten().collect();
                return Err(format!(
                    "HAProxy's backend {backend} has the servers {theirs:?}, but environments.{side}.upstreams are {ups:?} ({ours:?}): make them the same (bluegreen checks the one, HAProxy would serve the other)"
                ));
            }
        }
        Ok(())
    }

    /// The running HAProxy's map made `live`'s, in one commit: a new
    /// version is prepared off to the side and made current at once.
    async fn commit(&self, map: &str, live: Side) -> Result<(), String> {
        let prepared = self.api.run(&format!("prepare map {map}")).await?;
        let version = prepared
            .trim()
            .strip_prefix("New version created:")
            .map(str::trim)
            .filter(|v| v.parse::<u64>().is_ok())
            .ok_or_else(|| {
                format!(
                    "`prepare map {map}` (HAProxy 2.4 or later): {}",
                    haproxy_api::one_line(&prepared)
                )
            })?
            .to_string();
        for (key, side) in [("live", live), ("idle", live.other())] {
            self.api
                .quiet(&format!(
                    "add map @{version} {map} {key} {}",
                    self.cfg.backend_of(side)
                ))
                .await?;
        }
        self.api
            .quiet(&format!("commit map @{version} {map}"))
            .await
    }

    /// The backend the running HAProxy's `live` entry names.
    async fn live_entry(&self, map: &str) -> Result<Option<String>, String> {
        let shown = self.api.run(&format!("show map {map}")).await?;
        Ok(haproxy_api::entries(&shown).remove("live"))
    }

    /// The running HAProxy's map names `live`'s backend: every request from
    /// now on takes it.
    async fn confirm(&self, map: &str, live: Side) -> Result<(), String> {
        let wanted = self.cfg.backend_of(live);
        match self.live_entry(map).await? {
            Some(b) if b == wanted => Ok(()),
            other => Err(format!(
                "after the commit, HAProxy's map {map} says live = {other:?}, not {wanted}"
            )),
        }
    }

    /// The map file as it is; `None` when there is none.
    async fn current(&self) -> Result<Option<String>, String> {
        super::read_ours(&self.cfg.map).await
    }

    /// Writes the map file atomically.
    async fn write(&self, text: &str) -> Result<(), String> {
        super::write_ours(&self.cfg.map, text).await
    }

    /// The previous file back, and the running map back on `runtime`'s
    /// side when it had been committed; a sentence saying what was done.
    async fn put_back(&self, before: Option<&str>, runtime: Option<(&str, Side)>) -> String {
        let restored = match before {
            Some(text) => self.write(text).await,
            None => tokio::fs::remove_file(&self.cfg.map)
                .await
                .map_err(|e| e.to_string()),
        };
        let file = match restored {
            Ok(()) => "the previous map file is back".to_string(),
            Err(e) => format!(
                "putting the previous {} back failed too: {e}",
                self.cfg.map.display()
            ),
        };
        match runtime {
            None => format!("{file}; HAProxy was not changed"),
            Some((map, side)) => match self.commit(map, side).await {
                Ok(()) => format!("{file} and HAProxy serves {side} again"),
                Err(e) => format!("{file}, but putting HAProxy back on {side} failed: {e}"),
            },
        }
    }
}
