//! Taps on and off: a recording or a shadow run becomes a field of the
//! routing snapshot through the same routing change as a switch. Files are
//! opened before the change and closed after it: no I/O under the lock.

use super::{describe_health, Change, ControlError, Router};
use crate::taps::recorder::{RecordOptions, RecordStatus, Recorder};
use crate::taps::shadow::{Shadow, ShadowOptions};
use std::sync::Arc;
use std::time::Duration;

fn already_recording(r: &Recorder) -> ControlError {
    ControlError::refused(
        "record_refused",
        format!("already recording to {}; stop it first", r.path.display()),
    )
}

impl Router {
    /// Starts recording live traffic to a new file `name` in `[record] dir`.
    /// One recording at a time.
    pub async fn start_recording(
        &self,
        name: &str,
        options: RecordOptions,
    ) -> Result<RecordStatus, ControlError> {
        if let Some(r) = &self.snapshot.load().recorder {
            return Err(already_recording(r));
        }
        let recorder = Recorder::start(&self.config().record.dir, name, options)
            .await
            .map_err(|why| ControlError::refused("record_refused", why))?;
        let rec = recorder.clone();
        let started = self
            .route(|_, current| match &current.recorder {
                Some(r) => Err(already_recording(r)),
                None => Ok(Change::snapshot(move |s| s.recorder = Some(rec), ())),
            })
            .await;
        if let Err(message) = started {
            recorder.finish().await;
            let _ = tokio::fs::remove_file(&recorder.path).await;
            return Err(message);
        }
        tracing::info!(path = %recorder.path.display(), "recording live traffic");
        Ok(recorder.status())
    }

    /// Stops the recording and waits until its file is flushed.
    pub async fn stop_recording(&self) -> Result<RecordStatus, ControlError> {
        let recorder = self
            .route(|_, current| match current.recorder.clone() {
                None => Err(ControlError::refused(
                    "not_recording",
                    "no recording is running",
                )),
                Some(r) => Ok(Change::snapshot(|s| s.recorder = None, r)),
            })
            .await?;
        recorder.finish().await;
        Ok(recorder.status())
    }

    /// Starts mirroring live traffic to the idle side. One run at a time;
    /// with `options.duration_ms` it stops by itself.
    pub async fn start_shadow(
        self: &Arc<Self>,
        options: ShadowOptions,
    ) -> Result<Arc<Shadow>, ControlError> {
        let me = self.clone();
        let shadow = self
            .route_then(
                move |_, current| {
                    if current.shadow.is_some() {
                        return Err(ControlError::refused(
                            "shadow_refused",
                            "shadowing is already running; stop it first",
                        ));
                    }
                    let idle = current.live.other();
                    if current.pools[idle].healthy_count() == 0 {
                        return Err(ControlError::refused(
                            "shadow_refused",
                            format!(
                                "refusing to shadow to {idle}: no healthy upstream ({})",
                                describe_health(&current.pools[idle])
                            ),
                        ));
                    }
                    let accepted = me.accepted_differences();
                    let shadow = Shadow::start(me.plane.clone(), options, current.live);
                    for field in &accepted {
                        shadow.accept(field);
                    }
                    let run = shadow.clone();
                    Ok(Change::snapshot(move |s| s.shadow = Some(run), shadow))
                },
                |shadow: Arc<Shadow>| {
                    *self.last_shadow.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(shadow.clone());
                    shadow
                },
            )
            .await?;
        if let Some(ms) = shadow.options.duration_ms {
            let (router, s) = (self.clone(), shadow.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = s.wait_stopped() => return,
                    _ = router.shutdown.cancelled() => return,
                }
                router.stop_shadow_run(&s).await;
            });
        }
        let live = self.live();
        tracing::info!(%live, idle = %live.other(), percent = shadow.options.percent, "shadowing live traffic to the idle side");
        Ok(shadow)
    }

    /// Differences accepted as intended in this process (every run).
    pub fn accepted_differences(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Accepts a difference as intended (`bluegreen shadow accept`): the
    /// running shadow run, and every later one in this process, leave it
    /// out of the report and the gate. Returns whether a run was going.
    pub fn accept_difference(&self, field: &str) -> bool {
        let general = bluegreen_core::diff::generalize(field);
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(general);
        match self.snapshot.load().shadow.clone() {
            Some(run) => {
                run.accept(field);
                true
            }
            None => false,
        }
    }

    /// Stops the running shadow; its report stays readable.
    pub async fn stop_shadow(&self) -> Result<Arc<Shadow>, ControlError> {
        let s = self
            .route(|_, current| match current.shadow.clone() {
                None => Err(ControlError::refused(
                    "not_shadowing",
                    "shadowing is not running",
                )),
                Some(s) => Ok(Change::snapshot(|snap| snap.shadow = None, s)),
            })
            .await?;
        s.stop();
        self.events
            .emit(crate::events::Event::Shadow(Box::new(s.report())));
        tracing::info!("shadowing stopped");
        Ok(s)
    }

    /// Stops `run` if it is still the running shadow (for time limits).
    pub async fn stop_shadow_run(&self, run: &Arc<Shadow>) {
        run.stop();
        let target = run.clone();
        let stopped = self
            .route(|_, current| {
                let running = current
                    .shadow
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(s, &target));
                Ok::<_, String>(match running {
                    true => Change::snapshot(|s| s.shadow = None, true),
                    false => Change::none(false),
                })
            })
            .await;
        if stopped == Ok(true) {
            self.events
                .emit(crate::events::Event::Shadow(Box::new(run.report())));
            tracing::info!("shadowing stopped: its time or request count is up");
        }
    }
}
