//! Step 4: replay recorded traffic to the idle side to warm its caches.

use super::*;

/// Step 4: replay recorded traffic straight to the idle side's upstreams
/// (each request marked `X-Bluegreen-Replay: 1`, which the router would
/// strip), so its caches are warm before it takes live traffic.
pub(super) async fn warm(p: &Arc<Pipeline>, handle: &RunHandle, d: &DeployRecord) -> StepEnd {
    let Some(w) = &p.config().warm else {
        return StepEnd::Skipped("no [deploy.warm] configured".into());
    };
    let targets: Vec<String> = p.router.config().environments[d.target]
        .upstreams
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    let mut argv: Vec<String> = vec![
        crate::exe().into(),
        "replay".into(),
        w.file.display().to_string(),
        "--target".into(),
        targets.join(","),
        "--speed".into(),
        w.speed.clone(),
        "--concurrency".into(),
        w.concurrency.to_string(),
        "--methods".into(),
        w.methods.join(","),
    ];
    if let Some(l) = w.loop_for {
        argv.push("--loop-for".into());
        argv.push(format!("{}ms", l.as_millis()));
    }
    // A loop runs as long as it was told to; the hook limit applies on top.
    let limit = p.config().hook_timeout + w.loop_for.unwrap_or_default();
    let call = HookCall::new(p, argv, d.target, &d.version, &d.options.env).limit(limit);
    match call.run(p, &handle.abort).await {
        Ok(()) => StepEnd::Done(Some(format!("replayed {}", w.file.display()))),
        Err(e) if handle.abort.is_cancelled() => {
            StepEnd::End(Outcome::Aborted, format!("{} ({e})", aborted(handle)))
        }
        Err(e) => StepEnd::End(
            Outcome::Failed,
            format!("warm-up replay of {} failed: {e}", w.file.display()),
        ),
    }
}
