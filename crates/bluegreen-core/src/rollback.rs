//! Where a rollback goes. Pure: the deploy book and the live side in, a plan
//! out, so "never back onto a rejected version" is decided (and tested) in
//! one place.

use crate::deploy::{DeployBook, DeployRecord, Outcome};
use crate::Side;

/// What a rollback will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackPlan {
    /// Switch to `side`, whose app still runs `version` (instant).
    Switch { side: Side, version: Option<String> },
    /// Put `version` on `side` through the pipeline, then switch.
    Redeploy {
        side: Side,
        version: String,
        why: String,
    },
    /// `version` is already live.
    AlreadyLive { version: String },
    /// Nothing good to go back to; the message says why.
    Nothing(String),
}

/// The latest finished deploy of `side`, if any.
fn last_deploy_of(book: &DeployBook, side: Side) -> Option<&DeployRecord> {
    book.history.iter().rev().find(|d| d.target == side)
}

/// The deploy that rejected `version` (the bake rolled it back, or it
/// failed or was aborted), if the last deploy of it did.
pub fn rejected_by<'a>(book: &'a DeployBook, version: &str) -> Option<&'a DeployRecord> {
    book.history
        .iter()
        .rev()
        .find(|d| d.version == version)
        .filter(|d| d.outcome != Outcome::Succeeded)
}

/// Why a deploy's version is not one to go back to.
fn verdict(d: &DeployRecord) -> &'static str {
    match d.outcome {
        Outcome::RolledBack => "rolled back",
        Outcome::Aborted => "aborted",
        _ => "failed",
    }
}

/// The good release before `live`: the newest succeeded deploy of another
/// version from before the deploy that made `live` live (when there was
/// one), so a version the operator already rolled back from is not it.
fn release_before<'a>(book: &'a DeployBook, live: Option<&str>) -> Option<&'a str> {
    let good = |d: &&DeployRecord| d.outcome == Outcome::Succeeded;
    let made_live = book
        .history
        .iter()
        .rposition(|d| d.outcome == Outcome::Succeeded && Some(d.version.as_str()) == live)
        .unwrap_or(book.history.len());
    book.history[..made_live]
        .iter()
        .rev()
        .filter(good)
        .find(|d| Some(d.version.as_str()) != live)
        .map(|d| d.version.as_str())
}

/// A plain `rollback`: back to `target` (the side live before the last
/// switch) when what it runs was good; when its version was rejected, to
/// the good release before the live one (re-deployed), or nothing.
pub fn plan(book: &DeployBook, live: Side, target: Side) -> RollbackPlan {
    let release = &book.sides[target];
    let live_version = book.sides[live].version.clone();
    let rejected = last_deploy_of(book, target).filter(|d| {
        d.outcome != Outcome::Succeeded && release.version.as_deref() == Some(&d.version)
    });
    if release.version.is_none() && live_version.is_some() {
        // The first release went to the other side: this one never ran
        // anything of ours. Never offered, and --force does not make it so.
        return RollbackPlan::Nothing(format!(
            "nothing to roll back to: {target} has never run a release (the first deploy went to {live}), so a rollback would send every request to a side with nothing on it; deploy a version, or `bluegreen switch --to {target} --force` if {target} serves the app by other means"
        ));
    }
    let Some(bad) = rejected else {
        return match (&release.version, release.running) {
            (Some(v), false) => RollbackPlan::Redeploy {
                side: target,
                version: v.clone(),
                why: format!(
                    "{target} was decommissioned, so {v} is re-deployed to it through the pipeline"
                ),
            },
            (v, _) => RollbackPlan::Switch {
                side: target,
                version: v.clone(),
            },
        };
    };
    let before = release_before(book, live_version.as_deref());
    let live_text = live_version.as_deref().unwrap_or("the live release");
    match before {
        Some(v) => RollbackPlan::Redeploy {
            side: target,
            version: v.to_string(),
            why: format!(
                "{target} runs {}, which deploy #{} {}; {v}, the good release before {live_text}, is re-deployed to {target} through the pipeline",
                bad.version,
                bad.id,
                verdict(bad)
            ),
        },
        None => RollbackPlan::Nothing(format!(
            "nothing to roll back to: {target} runs {}, which deploy #{} {}, and no good release came before {live_text}; use rollback --to-version VERSION or deploy",
            bad.version,
            bad.id,
            verdict(bad)
        )),
    }
}

/// Where the rollback of a deploy still in its bake goes (its own breach,
/// or a node's watchdog while the deploy's node is gone): back to the side
/// it switched from, which served until moments ago (on a first deploy, the
/// app bluegreen found there), unless that side's app was stopped since.
pub fn plan_bake(book: &DeployBook, d: &DeployRecord) -> RollbackPlan {
    let from = &book.sides[d.from];
    match (&from.version, from.running) {
        (Some(v), false) => RollbackPlan::Nothing(format!(
            "{} ({v}) was stopped since deploy #{} switched away from it; a rollback re-deploys it",
            d.from, d.id
        )),
        (version, _) => RollbackPlan::Switch {
            side: d.from,
            version: version.clone(),
        },
    }
}

/// `rollback --to-version VERSION`: switch when the idle side runs it,
/// else re-deploy it there. A rejected version needs `force`.
pub fn plan_to(book: &DeployBook, live: Side, version: &str, force: bool) -> RollbackPlan {
    if book.sides[live].version.as_deref() == Some(version) {
        return RollbackPlan::AlreadyLive {
            version: version.to_string(),
        };
    }
    if let (Some(bad), false) = (rejected_by(book, version), force) {
        return RollbackPlan::Nothing(format!(
            "{version} was rejected: deploy #{} {} ({}); pass --force to go back to it anyway",
            bad.id,
            verdict(bad),
            bad.reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    let idle = live.other();
    let release = &book.sides[idle];
    if release.version.as_deref() == Some(version) && release.running {
        return RollbackPlan::Switch {
            side: idle,
            version: Some(version.to_string()),
        };
    }
    RollbackPlan::Redeploy {
        side: idle,
        version: version.to_string(),
        why: format!(
            "{version} is not running on {idle}, so it is re-deployed there through the pipeline"
        ),
    }
}

/// `plan`, unless it goes back to a release the last contract migration
/// left behind: only releases deployed at or after the contracted one know
/// the schema as it is now. `force` goes anyway (the operator's call).
pub fn past_contract(book: &DeployBook, plan: RollbackPlan, force: bool) -> RollbackPlan {
    let (Some(c), false) = (&book.contracted, force) else {
        return plan;
    };
    let version = match &plan {
        RollbackPlan::Switch {
            version: Some(v), ..
        }
        | RollbackPlan::Redeploy { version: v, .. } => v.as_str(),
        _ => return plan,
    };
    let knows_schema = book
        .history
        .iter()
        .any(|d| d.version == version && d.outcome == Outcome::Succeeded && d.id >= c.deploy_id);
    if knows_schema {
        return plan;
    }
    RollbackPlan::Nothing(format!(
        "refusing to go back to {version}: {PAST_CONTRACT} of {} (deploy #{}: {}) have run, and {version} was released before them, so it expects a schema that is gone; pass --force to go back anyway (dangerous: {version} may fail on every request that touches what the contract removed)",
        c.version,
        c.deploy_id,
        c.files.join(", ")
    ))
}

/// The words only [`past_contract`]'s refusal holds.
const PAST_CONTRACT: &str = "the contract migrations";

/// True for the refusal [`past_contract`] writes: the pipeline hands it on
/// as a plain message (with a stopped side's), and the admin API gives it a
/// code of its own (`past_contract`).
pub fn is_past_contract(message: &str) -> bool {
    message.starts_with("refusing to go back to ") && message.contains(PAST_CONTRACT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{DeployOptions, SideRelease};

    /// A book after deploys of `(version, target, outcome)`, in order, with
    /// sides as a pipeline leaves them.
    fn book(deploys: &[(&str, Side, Outcome)]) -> DeployBook {
        let mut b = DeployBook::default();
        for (i, (v, side, outcome)) in deploys.iter().enumerate() {
            let mut d = DeployRecord::new(
                i as u64 + 1,
                v.to_string(),
                side.other(),
                None,
                DeployOptions::default(),
                0,
            );
            d.outcome = *outcome;
            d.reason = Some("p99 breach".into());
            b.sides[*side] = SideRelease {
                version: Some(v.to_string()),
                running: true,
            };
            b.history.push(d);
        }
        b
    }

    /// A bake's rollback goes back to where the deploy came from, even on a
    /// first deploy (whose old side ran the app bluegreen found), never onto
    /// a side stopped since.
    #[test]
    fn a_bakes_rollback_goes_back_to_the_deploys_old_side_while_it_runs() {
        let mut b = book(&[("v1", Side::Green, Outcome::Succeeded)]);
        let d = DeployRecord::new(
            2,
            "v2".into(),
            Side::Green,
            None,
            DeployOptions::default(),
            0,
        );
        assert_eq!(
            plan_bake(&b, &d),
            RollbackPlan::Switch {
                side: Side::Green,
                version: Some("v1".into())
            }
        );
        let first = DeployRecord::new(
            1,
            "v1".into(),
            Side::Blue,
            None,
            DeployOptions::default(),
            0,
        );
        assert_eq!(
            plan_bake(&DeployBook::default(), &first),
            RollbackPlan::Switch {
                side: Side::Blue,
                version: None
            }
        );
        b.sides[Side::Green].running = false;
        assert!(matches!(plan_bake(&b, &d), RollbackPlan::Nothing(why) if why.contains("stopped")));
    }

    #[test]
    fn after_the_bake_rolled_a_release_back_rollback_never_returns_to_it() {
        // v1 on green (live), v2 on blue rolled back: live is green again.
        let b = book(&[
            ("v1", Side::Green, Outcome::Succeeded),
            ("v2", Side::Blue, Outcome::RolledBack),
        ]);
        match plan(&b, Side::Green, Side::Blue) {
            RollbackPlan::Nothing(why) => {
                assert!(
                    why.contains("v2") && why.contains("rolled back") && why.contains("#2"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // With an earlier good release, that one is re-deployed.
        let b = book(&[
            ("v0", Side::Blue, Outcome::Succeeded),
            ("v1", Side::Green, Outcome::Succeeded),
            ("v2", Side::Blue, Outcome::RolledBack),
        ]);
        match plan(&b, Side::Green, Side::Blue) {
            RollbackPlan::Redeploy { side, version, why } => {
                assert_eq!((side, version.as_str()), (Side::Blue, "v0"));
                assert!(why.contains("v2") && why.contains("before v1"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_release_before_is_before_the_live_one_not_one_backed_out_of() {
        // v1, v2 shipped; the operator rolled back to v1 (v2 stays on green);
        // v3 then replaced v2 on green and was rolled back by the bake.
        let mut b = book(&[
            ("v0", Side::Green, Outcome::Succeeded),
            ("v1", Side::Blue, Outcome::Succeeded),
            ("v2", Side::Green, Outcome::Succeeded),
            ("v3", Side::Green, Outcome::RolledBack),
        ]);
        b.sides.blue.version = Some("v1".into());
        match plan(&b, Side::Blue, Side::Green) {
            RollbackPlan::Redeploy { version, .. } => assert_eq!(version, "v0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_deploy_on_the_idle_side_is_not_a_rollback_target_either() {
        let b = book(&[
            ("v1", Side::Blue, Outcome::Succeeded),
            ("v2", Side::Green, Outcome::Succeeded),
            ("v3", Side::Blue, Outcome::Failed),
        ]);
        assert!(matches!(
            plan(&b, Side::Green, Side::Blue),
            RollbackPlan::Redeploy { ref version, .. } if version == "v1"
        ));
    }

    #[test]
    fn a_good_idle_release_is_an_instant_switch_or_a_redeploy_when_stopped() {
        let mut b = book(&[
            ("v1", Side::Blue, Outcome::Succeeded),
            ("v2", Side::Green, Outcome::Succeeded),
        ]);
        assert_eq!(
            plan(&b, Side::Green, Side::Blue),
            RollbackPlan::Switch {
                side: Side::Blue,
                version: Some("v1".into())
            }
        );
        b.sides.blue.running = false;
        assert!(
            matches!(plan(&b, Side::Green, Side::Blue), RollbackPlan::Redeploy { ref version, .. } if version == "v1")
        );
    }

    #[test]
    fn to_version_switches_redeploys_and_refuses_rejected_without_force() {
        let b = book(&[
            ("v1", Side::Blue, Outcome::Succeeded),
            ("v2", Side::Green, Outcome::Succeeded),
            ("v3", Side::Blue, Outcome::RolledBack),
        ]);
        assert_eq!(
            plan_to(&b, Side::Green, "v2", false),
            RollbackPlan::AlreadyLive {
                version: "v2".into()
            }
        );
        assert!(matches!(
            plan_to(&b, Side::Green, "v1", false),
            RollbackPlan::Redeploy {
                side: Side::Blue,
                ..
            }
        ));
        assert!(
            matches!(plan_to(&b, Side::Green, "v3", false), RollbackPlan::Nothing(ref w) if w.contains("--force"))
        );
        assert!(matches!(
            plan_to(&b, Side::Green, "v3", true),
            RollbackPlan::Switch {
                side: Side::Blue,
                ..
            }
        ));
    }

    #[test]
    fn a_release_from_before_the_contract_is_refused_unless_forced() {
        use crate::deploy::Contracted;
        let mut b = book(&[
            ("v1", Side::Blue, Outcome::Succeeded),
            ("v2", Side::Green, Outcome::Succeeded),
        ]);
        b.sides[Side::Blue].running = false;
        let plan = plan(&b, Side::Green, Side::Blue);
        assert!(matches!(&plan, RollbackPlan::Redeploy { version, .. } if version == "v1"));
        assert_eq!(
            past_contract(&b, plan.clone(), false),
            plan,
            "no contract yet"
        );
        b.contracted = Some(Contracted {
            deploy_id: 2,
            version: "v2".into(),
            files: vec!["0002_title.contract.sql".into()],
            at_ms: 1,
        });
        match past_contract(&b, plan.clone(), false) {
            RollbackPlan::Nothing(why) => {
                assert!(why.contains("refusing to go back to v1"), "{why}");
                assert!(
                    why.contains("0002_title.contract.sql") && why.contains("--force"),
                    "{why}"
                );
                assert!(is_past_contract(&why), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(past_contract(&b, plan, true), plan_forced(&b));
        // A release deployed after the contract is fine to go back to.
        let v2 = plan_to(&b, Side::Blue, "v2", false);
        assert_eq!(past_contract(&b, v2.clone(), false), v2);
    }

    #[test]
    fn only_the_contract_refusal_is_told_apart() {
        for other in [
            "green (v1) was decommissioned: its app is stopped; use rollback or deploy to bring it back",
            "v2 is already live on blue",
            "nothing to roll back to: no earlier release",
        ] {
            assert!(!is_past_contract(other), "{other}");
        }
    }

    fn plan_forced(b: &DeployBook) -> RollbackPlan {
        plan(b, Side::Green, Side::Blue)
    }
}
