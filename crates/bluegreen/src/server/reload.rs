//! `bluegreen reload` and SIGHUP: the config file is read and validated
//! whole (certificates and CA files loaded too) before anything changes;
//! then the router and the pipeline apply what can change live, and the
//! answer lists every change applied and every one that waits for
//! `bluegreen upgrade`. A bad file changes nothing and says why.

use crate::server::running::Running;
use bluegreen_api::lifecycle::{ReloadError, Reloaded};
use bluegreen_core::config::{changes, Config};
use bluegreen_router::events::Event;
use std::path::{Path, PathBuf};

pub async fn reload(path: &Path, running: &Running) -> Result<Reloaded, ReloadError> {
    let file: PathBuf = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || {
        let config = Config::load(&file).map_err(|e| e.to_string())?;
        let problems = crate::certs::certificate_problems(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(crate::certs::describe_problems(&file, &problems))
        }
    })
    .await
    .map_err(|e| ReloadError::Failed(e.to_string()))?;
    let result = match loaded {
        Err(why) => Err(ReloadError::InvalidConfig(why)),
        Ok(config) => {
            // Only what can change live reaches the router and the
            // pipeline; the rest is reported as waiting for an upgrade.
            let running_now = running.router.config();
            let changes = changes::diff(&running_now, &config);
            let live = changes::applied(&running_now, &config);
            let deploy = live.deploy.clone();
            match running.router.reload(live).await {
                Ok(_) => {
                    if let (Some(p), Some(d)) = (&running.pipeline, deploy) {
                        if changes.applied.iter().any(|c| c == "deploy") {
                            p.set_config(d);
                        }
                    }
                    Ok(changes)
                }
                Err(e) => Err(ReloadError::Failed(e.to_string())),
            }
        }
    };
    let events = &running.router.events;
    match result {
        Ok(changes) => {
            let mut message = if changes.applied.is_empty() {
                format!("reloaded {}: nothing to change", path.display())
            } else {
                format!(
                    "reloaded {}: applied {}",
                    path.display(),
                    changes.applied.join("; ")
                )
            };
            if !changes.needs_upgrade.is_empty() {
                message.push_str(&format!(
                    "; needs `bluegreen upgrade` (unchanged until then): {}",
                    changes.needs_upgrade.join(", ")
                ));
            }
            tracing::info!("{message}");
            events.emit(Event::Reload {
                ok: true,
                detail: message.clone(),
            });
            Ok(Reloaded {
                applied: changes.applied,
                needs_upgrade: changes.needs_upgrade,
                message,
            })
        }
        Err(e) => {
            let why = match &e {
                ReloadError::InvalidConfig(w) | ReloadError::Failed(w) => w.clone(),
            };
            tracing::error!("reload refused, the running config stays: {why}");
            events.emit(Event::Reload {
                ok: false,
                detail: format!("reload refused, the running config stays: {why}"),
            });
            Err(e)
        }
    }
}
