//! No pass without evidence: what a bake or a canary share that saw too
//! little traffic to judge does, once it has waited as long again for more.
//! It fails (the default), holds for `bluegreen promote`, or passes when the
//! operator said so beforehand (`--accept-inconclusive`, or
//! `deploy.bake.on_inconclusive = "accept"`), which the record then says.

use super::*;
use bluegreen_core::config::deploy::OnInconclusive;

/// How an inconclusive gate ends.
pub(super) enum Decided {
    /// It goes on, with this sentence for the record.
    Accepted(String),
    /// The deploy ends with this outcome and reason (the caller takes
    /// traffic back first).
    Refused(Outcome, String),
}

/// Decides what `what` (a sentence: "bake: 3 of the 20 requests needed
/// reached green in 30 s") leads to.
pub(super) async fn inconclusive(
    p: &Arc<Pipeline>,
    handle: &RunHandle,
    d: &DeployRecord,
    step: Step,
    what: &str,
) -> Decided {
    // The first release has nothing to go back to: it cannot be judged
    // against anything, and failing it would leave nothing live.
    let first = d.previous_version.is_none();
    let how = if d.options.accept_inconclusive || first {
        OnInconclusive::Accept
    } else {
        p.config().bake.on_inconclusive
    };
    match how {
        OnInconclusive::Accept => {
            let why = if first {
                "the first release: nothing to go back to"
            } else if d.options.accept_inconclusive {
                "--accept-inconclusive"
            } else {
                "deploy.bake.on_inconclusive = \"accept\""
            };
            let text = format!("{what}: too little traffic to judge, passed as inconclusive ({why})");
            log(p, text.clone()).await;
            Decided::Accepted(text)
        }
        OnInconclusive::Fail => Decided::Refused(
            Outcome::Failed,
            format!(
                "{what}: too little traffic to judge, which is never a pass; send traffic, lower deploy.bake.min_requests, or deploy with --accept-inconclusive"
            ),
        ),
        OnInconclusive::Hold => {
            let text = format!(
                "{what}: too little traffic to judge; waiting for `bluegreen promote` (accept) or `bluegreen abort`"
            );
            touch(p, |r| r.held = Some(text.clone())).await;
            note(p, step, text.clone()).await;
            p.router.emit(Event::Bake {
                deploy_id: d.id,
                verdict: "held",
                detail: text,
                breach: None,
                view: None,
            });
            let limit = p.config().promote_timeout.unwrap_or(Duration::MAX / 4);
            let end = tokio::select! {
                _ = handle.promote.notified() => Decided::Accepted(format!(
                    "{what}: too little traffic to judge, accepted by `bluegreen promote`"
                )),
                _ = handle.abort.cancelled() => Decided::Refused(Outcome::Aborted, aborted(handle)),
                _ = tokio::time::sleep(limit) => Decided::Refused(
                    Outcome::Failed,
                    format!("{what}: too little traffic to judge, and no promote within {} (promote_timeout)", humantime::format_duration(limit)),
                ),
            };
            touch(p, |r| r.held = None).await;
            if let Decided::Accepted(t) = &end {
                log(p, t.clone()).await;
            }
            end
        }
    }
}
