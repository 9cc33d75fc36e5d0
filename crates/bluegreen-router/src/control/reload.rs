//! A reload: what a new config changes that can change live is applied at
//! once, through one snapshot swap under the routing lock (so it is
//! ordered with switches): each side's upstream list (kept upstreams keep
//! their health and connections; removed ones finish what they carry and
//! stop being checked; added ones are checked before they get traffic),
//! timeouts, retries and limits of the request path, health settings, and
//! the certificate files. Everything that can fail is prepared first:
//! either all of it applies, or nothing does.

use super::{Change, ControlError, Router};
use crate::settings::ProxySettings;
use crate::upstream::tls::UpstreamTls;
use bluegreen_core::config::changes::{diff, Changes};
use bluegreen_core::config::Config;
use bluegreen_core::{Side, Sides};
use std::sync::Arc;

impl Router {
    /// Applies `new` (validated) and returns what changed. Blocking work
    /// (CA files, certificates) runs off the async threads.
    pub async fn reload(self: &Arc<Self>, new: Config) -> Result<Changes, ControlError> {
        let old = self.config();
        let changes = diff(&old, &new);
        // A reload rotates the session key when it is due by age (the
        // previous one still verifies, and outlives every link it signed:
        // a reload that rotated every time cut 7-day links after two).
        // Not a cluster's shared key: reloading every node would rotate it
        // once per node and retire the key that signed every client's cookie.
        let signer = self.signer.clone();
        if self.cluster.is_none() {
            match tokio::task::spawn_blocking(move || signer.rotate_if_due()).await {
                Ok(Ok(true)) => tracing::info!("the session key was rotated (it was 8 days old)"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the session key was not rotated"),
                Err(e) => tracing::warn!(error = %e, "the session key was not rotated"),
            }
        }
        if changes.applied.is_empty() {
            return Ok(changes);
        }
        // 1. Prepare what can fail: upstream TLS clients, certificates.
        let new = Arc::new(new);
        let cfg = new.clone();
        let certs = self.cert_store();
        let certs_changed = changes.applied.iter().any(|c| c == "tls.certificates");
        let prepared = tokio::task::spawn_blocking(move || {
            let tls: Sides<Option<Arc<UpstreamTls>>> = Sides {
                blue: upstream_tls(&cfg, Side::Blue)?,
                green: upstream_tls(&cfg, Side::Green)?,
            };
            let files = match (&certs, &cfg.tls) {
                (Some(_), Some(t)) if certs_changed => Some(
                    crate::tls::Certificates::load(&t.certificates)
                        .map_err(|e| reload_failed(format!("tls.certificates: {e}")))?,
                ),
                _ => None,
            };
            Ok::<_, ControlError>((tls, files))
        });
        // A file that cannot be read in time (a hung file system) fails
        // the reload; the admin API never waits on it for long.
        let prepared = tokio::time::timeout(std::time::Duration::from_secs(10), prepared)
            .await
            .map_err(|_| ControlError::Failed {
                code: "reload_failed",
                message: "reading the TLS files took more than 10 s; nothing changed".into(),
            })?
            .map_err(|e| reload_failed(e.to_string()))??;
        let (tls, files) = prepared;

        // A driven router (nginx) gets the new upstreams first: refused
        // there, the reload changes nothing.
        let redriven = if self.driver.is_some()
            && (old.environments != new.environments || old.health.path != new.health.path)
        {
            Some(self.redrive(&new).await?)
        } else {
            None
        };

        // 2. One snapshot swap: pools and request settings together.
        let settings = Arc::new(ProxySettings::from_config(&new.proxy));
        let sessions = super::session_policy(&new);
        let (rise, fall) = (new.health.healthy_threshold, new.health.unhealthy_threshold);
        let (o, n) = (old.clone(), new.clone());
        let (added, removed) = self
            .route(move |_, snap| {
                let mut pools = snap.pools.clone();
                let mut added = Vec::new();
                let mut removed = Vec::new();
                for side in Side::ALL {
                    let (oe, ne) = (&o.environments[side], &n.environments[side]);
                    if oe.upstreams == ne.upstreams
                        && oe.tls == ne.tls
                        && o.proxy.balance == n.proxy.balance
                    {
                        continue;
                    }
                    let reshaped = snap.pools[side]
                        .reshaped(
                            &ne.upstreams,
                            n.proxy.balance,
                            rise,
                            fall,
                            tls[side].clone(),
                            oe.tls != ne.tls,
                        )
                        .map_err(|e| ControlError::Failed {
                            code: "reload_failed",
                            message: e,
                        })?;
                    for u in &reshaped.added {
                        u.set_max_requests(n.proxy.upstream_max_requests);
                    }
                    pools[side] = Arc::new(reshaped.pool);
                    added.extend(reshaped.added);
                    removed.extend(reshaped.removed);
                }
                Ok::<_, ControlError>(Change::snapshot(
                    move |s| {
                        s.pools = pools;
                        s.settings = settings;
                        s.sessions = sessions;
                    },
                    (added, removed),
                ))
            })
            .await?;
        self.config.store(new.clone());
        // A switch that came between wrote the driven router's file with
        // the config it had: written again with this one.
        if redriven.is_some_and(|live| live != self.live()) {
            if let Err(e) = self.redrive(&new).await {
                tracing::error!(error = %e, "the driven router did not take the reloaded upstreams after a switch; the next switch writes them again");
            }
        }

        // 3. What follows from it: health checks, thresholds, certificates.
        for u in &removed {
            u.retired.cancel();
        }
        for u in added {
            crate::upstream::health::watch(&self.plane, u);
        }
        {
            // Kept upstreams keep the places in use; added ones get no
            // traffic before their checks pass, by when this is set.
            let snap = self.snapshot();
            for pool in [&snap.pools.blue, &snap.pools.green] {
                for u in &pool.upstreams {
                    u.set_max_requests(new.proxy.upstream_max_requests);
                }
            }
        }
        if old.health != new.health {
            let snap = self.snapshot();
            for pool in [&snap.pools.blue, &snap.pools.green] {
                for u in &pool.upstreams {
                    u.set_thresholds(rise, fall);
                }
            }
        }
        if let (Some(certs), Some(files), Some(t)) = (self.cert_store(), files, &new.tls) {
            certs.replace_files(&t.certificates, files);
        }
        Ok(changes)
    }
}

/// The TLS client of a side's upstreams under `config` (reads CA files).
fn upstream_tls(config: &Config, side: Side) -> Result<Option<Arc<UpstreamTls>>, ControlError> {
    config.environments[side]
        .tls
        .as_ref()
        .map(|t| UpstreamTls::new(t).map(Arc::new))
        .transpose()
        .map_err(|e| reload_failed(format!("environments.{side}.tls: {e}")))
}

/// A reload that failed; nothing changed.
fn reload_failed(message: String) -> ControlError {
    ControlError::Failed {
        code: "reload_failed",
        message,
    }
}
