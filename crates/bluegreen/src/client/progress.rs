//! Live progress of a deploy: a step list with spinners on a terminal
//! (indicatif), one line per event otherwise, or JSON lines with `--json`.

use bluegreen_core::deploy::{DeployRecord, Outcome, StepState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Terminal,
    Lines,
    Json,
}

impl Mode {
    /// Terminal when stdout is one, lines otherwise; JSON when asked.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Lines
        }
    }
}

/// Renders successive snapshots of one deploy record.
pub struct Progress {
    mode: Mode,
    last: Option<DeployRecord>,
    multi: Option<MultiProgress>,
    bars: Vec<ProgressBar>,
    /// The state each bar was last drawn in.
    shown: Vec<Option<StepState>>,
    /// Each step's state and detail as last printed (lines, JSON).
    printed: Vec<Option<(StepState, Option<String>)>>,
}

fn secs(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

fn state_name(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Failed => "failed",
        StepState::Skipped => "skipped",
    }
}

/// One line summing up how a deploy ended.
pub fn verdict(d: &DeployRecord) -> String {
    let took = d
        .finished_at_ms
        .map(|f| secs(f.saturating_sub(d.created_at_ms)))
        .unwrap_or_default();
    let head = format!("deploy #{} of {} to {}", d.id, d.version, d.target);
    match d.outcome {
        Outcome::Succeeded => format!("{head} succeeded in {took}: {} is live", d.target),
        Outcome::RolledBack => format!(
            "{head} was ROLLED BACK after {took}: {}; traffic is back on {}",
            d.reason.as_deref().unwrap_or("?"),
            d.from
        ),
        Outcome::Aborted => format!(
            "{head} was ABORTED after {took}: {}; {} is live",
            d.reason.as_deref().unwrap_or("?"),
            d.from
        ),
        Outcome::Failed => format!(
            "{head} FAILED after {took}: {}; {} was never switched away from",
            d.reason.as_deref().unwrap_or("?"),
            d.from
        ),
        Outcome::Running => format!("{head} is running"),
    }
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            last: None,
            multi: None,
            bars: Vec::new(),
            shown: Vec::new(),
            printed: Vec::new(),
        }
    }

    /// Shows what changed since the previous snapshot.
    pub fn update(&mut self, d: &DeployRecord) -> std::io::Result<()> {
        if self.mode == Mode::Terminal {
            let seen = self.last.as_ref().map_or(0, |p| p.log.len());
            let logs = &d.log[seen.min(d.log.len())..];
            self.terminal(d, logs.iter().map(|l| l.text.as_str()));
            self.last = Some(d.clone());
            return Ok(());
        }
        for line in self.lines(d) {
            outln!("{line}")?;
        }
        Ok(())
    }

    /// The lines (or JSON lines) `d` adds to what was printed. Steps come
    /// in pipeline order: one that changed ahead of its turn (the canary
    /// step skipped when the deploy starts) waits until every step before
    /// it has ended, so it never shows up between another step's `running`
    /// and its end.
    fn lines(&mut self, d: &DeployRecord) -> Vec<String> {
        let prev = self.last.replace(d.clone());
        let mut out = Vec::new();
        if prev.is_none() && self.mode == Mode::Lines {
            out.push(format!(
                "deploy #{}: {} to {} (live: {})",
                d.id, d.version, d.target, d.from
            ));
        }
        let seen = prev.as_ref().map_or(0, |p| p.log.len());
        let logs = &d.log[seen.min(d.log.len())..];
        if self.mode == Mode::Lines {
            out.extend(logs.iter().map(|l| format!("  | {}", l.text)));
        }
        // While the deploy runs, nothing past the step it is at.
        let turn = if d.is_finished() {
            d.steps.len()
        } else {
            d.steps
                .iter()
                .position(|s| matches!(s.state, StepState::Pending | StepState::Running))
                .unwrap_or(d.steps.len())
        };
        if self.printed.len() < d.steps.len() {
            self.printed.resize(d.steps.len(), None);
        }
        for (i, s) in d.steps.iter().enumerate().take(turn + 1) {
            let now = Some((s.state, s.detail.clone()));
            if s.state == StepState::Pending || self.printed[i] == now {
                continue;
            }
            self.printed[i] = now;
            out.push(match self.mode {
                Mode::Json => serde_json::json!({"event": "step", "deploy": d.id, "step": s.step,
                    "state": s.state, "duration_ms": s.duration_ms(), "detail": s.detail})
                .to_string(),
                _ => format!(
                    "  {:<12} {}{}{}",
                    s.step.as_str(),
                    state_name(s.state),
                    s.duration_ms()
                        .map(|m| format!(" ({})", secs(m)))
                        .unwrap_or_default(),
                    s.detail
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                ),
            });
        }
        if self.mode == Mode::Json {
            out.extend(logs.iter().map(|l| {
                serde_json::json!({"event": "log", "deploy": d.id, "text": l.text}).to_string()
            }));
        }
        out
    }

    /// Prints the final verdict.
    pub fn finish(&mut self, d: &DeployRecord) -> std::io::Result<()> {
        self.update(d)?;
        match self.mode {
            Mode::Json => outln!(
                "{}",
                serde_json::json!({"event": "end", "deploy": d.id, "outcome": d.outcome,
                    "reason": d.reason, "breach": d.breach})
            ),
            Mode::Terminal => {
                for b in &self.bars {
                    b.finish();
                }
                outln!("{}", verdict(d))
            }
            Mode::Lines => outln!("{}", verdict(d)),
        }
    }

    fn terminal<'a>(&mut self, d: &DeployRecord, logs: impl Iterator<Item = &'a str>) {
        let multi = self.multi.get_or_insert_with(|| {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let _ = m.println(format!(
                "deploy #{}: {} to {} (live: {})",
                d.id, d.version, d.target, d.from
            ));
            m
        });
        if self.bars.is_empty() {
            for s in &d.steps {
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("  · {prefix:<12} {wide_msg}").expect("template"),
                );
                bar.set_prefix(s.step.as_str().to_string());
                let bar = multi.add(bar);
                self.bars.push(bar);
            }
        }
        for l in logs {
            let _ = multi.println(format!("  | {l}"));
        }
        let running =
            ProgressStyle::with_template("  {spinner:.cyan} {prefix:<12} {elapsed:>4} {wide_msg}")
                .expect("template");
        let still = |mark: &str| {
            ProgressStyle::with_template(&format!("  {mark} {{prefix:<12}} {{wide_msg}}"))
                .expect("template")
        };
        for (i, (s, bar)) in d.steps.iter().zip(&self.bars).enumerate() {
            let detail = s.detail.clone().unwrap_or_default();
            let changed = self.shown.get(i).copied().flatten() != Some(s.state);
            match s.state {
                StepState::Running => {
                    if changed {
                        bar.reset_elapsed();
                        bar.set_style(running.clone());
                        bar.enable_steady_tick(Duration::from_millis(120));
                    }
                    bar.set_message(detail);
                }
                StepState::Pending => {
                    if changed {
                        bar.set_style(still("·"));
                    }
                }
                done => {
                    let mark = match done {
                        StepState::Done => "✓",
                        StepState::Failed => "✗",
                        _ => "-",
                    };
                    let dur = s
                        .duration_ms()
                        .map(|m| format!("{:>7}  ", secs(m)))
                        .unwrap_or_default();
                    bar.disable_steady_tick();
                    bar.set_style(still(mark));
                    bar.set_message(format!("{dur}{detail}"));
                    bar.tick();
                }
            }
            if self.shown.len() <= i {
                self.shown.resize(i + 1, None);
            }
            self.shown[i] = Some(s.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen_core::deploy::{DeployOptions, Step};
    use bluegreen_core::Side;

    /// The step names of `lines`, in the order they were printed.
    fn steps_of(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("  ") && !l.starts_with("  |"))
            .map(|l| {
                l.split(|c: char| c.is_whitespace() || c == ':')
                    .filter(|w| !w.is_empty())
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn steps_print_in_pipeline_order() {
        // The canary step is skipped from the start (no --canary).
        let mut d = DeployRecord::new(
            1,
            "v2".into(),
            Side::Blue,
            None,
            DeployOptions::default(),
            0,
        );
        let mut p = Progress::new(Mode::Lines);
        let mut printed = Vec::new();
        printed.extend(p.lines(&d));
        d.start(Step::Expand, 1);
        printed.extend(p.lines(&d));
        d.skip(Step::Expand, "no [deploy.migrations]", 2);
        d.start(Step::Deploy, 2);
        printed.extend(p.lines(&d));
        for (i, step) in [
            Step::Deploy,
            Step::Health,
            Step::Smoke,
            Step::Warm,
            Step::Shadow,
            Step::Gate,
        ]
        .into_iter()
        .enumerate()
        {
            d.finish(step, None, 3 + i as u64);
            printed.extend(p.lines(&d));
        }
        d.start(Step::Switch, 10);
        printed.extend(p.lines(&d));
        assert_eq!(
            steps_of(&printed),
            [
                "expand running",
                "expand skipped",
                "deploy running",
                "deploy done",
                "health done",
                "smoke done",
                "warm done",
                "shadow done",
                "gate done",
                "canary skipped",
                "switch running",
            ],
            "{printed:#?}"
        );
        // JSON lines keep the same order.
        let mut j = Progress::new(Mode::Json);
        let mut d = DeployRecord::new(
            2,
            "v3".into(),
            Side::Blue,
            None,
            DeployOptions::default(),
            0,
        );
        d.start(Step::Expand, 1);
        let first = j.lines(&d);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].contains("\"expand\""), "{first:?}");
    }
}
