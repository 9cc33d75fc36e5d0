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
        }
    }

    /// Shows what changed since the previous snapshot.
    pub fn update(&mut self, d: &DeployRecord) {
        let prev = self.last.take();
        let new_logs = d
            .log
            .len()
            .saturating_sub(prev.as_ref().map(|p| p.log.len()).unwrap_or(0));
        let logs = &d.log[d.log.len() - new_logs..];
        match self.mode {
            Mode::Terminal => self.terminal(d, logs.iter().map(|l| l.text.as_str())),
            Mode::Lines => {
                if prev.is_none() {
                    println!(
                        "deploy #{}: {} to {} (live: {})",
                        d.id, d.version, d.target, d.from
                    );
                }
                for l in logs {
                    println!("  | {}", l.text);
                }
                for s in &d.steps {
                    let before = prev.as_ref().map(|p| p.step(s.step));
                    if before.map(|b| (b.state, &b.detail)) != Some((s.state, &s.detail))
                        && s.state != StepState::Pending
                    {
                        let dur = s
                            .duration_ms()
                            .map(|m| format!(" ({})", secs(m)))
                            .unwrap_or_default();
                        println!(
                            "  {:<12} {}{dur}{}",
                            s.step.as_str(),
                            state_name(s.state),
                            s.detail
                                .as_deref()
                                .map(|x| format!(": {x}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            Mode::Json => {
                for s in &d.steps {
                    let before = prev.as_ref().map(|p| p.step(s.step));
                    if before.map(|b| (b.state, &b.detail)) != Some((s.state, &s.detail))
                        && s.state != StepState::Pending
                    {
                        println!(
                            "{}",
                            serde_json::json!({"event": "step", "deploy": d.id, "step": s.step,
                                "state": s.state, "duration_ms": s.duration_ms(), "detail": s.detail})
                        );
                    }
                }
                for l in logs {
                    println!(
                        "{}",
                        serde_json::json!({"event": "log", "deploy": d.id, "text": l.text})
                    );
                }
            }
        }
        self.last = Some(d.clone());
    }

    /// Prints the final verdict.
    pub fn finish(&mut self, d: &DeployRecord) {
        self.update(d);
        match self.mode {
            Mode::Json => println!(
                "{}",
                serde_json::json!({"event": "end", "deploy": d.id, "outcome": d.outcome,
                    "reason": d.reason, "breach": d.breach})
            ),
            Mode::Terminal => {
                for b in &self.bars {
                    b.finish();
                }
                println!("{}", verdict(d));
            }
            Mode::Lines => println!("{}", verdict(d)),
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
