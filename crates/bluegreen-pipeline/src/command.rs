//! Running hook and smoke-test commands: arguments without a shell, output
//! captured line by line into the deploy log, a time limit, and the whole
//! process group killed when the limit passes or the deploy is aborted.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Lines of output kept for an error message.
const TAIL: usize = 20;

/// How a command did not succeed. `tail` is its last lines of output,
/// ready to append ("; last output: ...", or empty).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}`: {source}")]
    Wait {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {limit}{tail}", limit = humantime_secs(*.limit))]
    Timeout {
        command: String,
        limit: Duration,
        tail: String,
    },
    #[error("`{command}` was stopped: the deploy was aborted")]
    Aborted { command: String },
    #[error("`{command}` failed ({status}){tail}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        tail: String,
    },
}

/// Runs `argv` to completion. Each output line goes to `on_line`. Fails with a
/// message naming the command, how it ended and the last lines it printed.
pub async fn run(
    argv: &[String],
    workdir: &Path,
    env: &[(String, String)],
    limit: Duration,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(String),
) -> Result<(), CommandError> {
    let shown = argv.join(" ");
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(workdir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut tail: Vec<String> = Vec::new();
    let mut keep = |line: String, on_line: &mut dyn FnMut(String)| {
        if tail.len() == TAIL {
            tail.remove(0);
        }
        tail.push(line.clone());
        on_line(line);
    };
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let (mut out_open, mut err_open) = (true, true);
    let status = loop {
        tokio::select! {
            l = out.next_line(), if out_open => match l {
                Ok(Some(l)) => keep(l, &mut on_line),
                _ => out_open = false,
            },
            l = err.next_line(), if err_open => match l {
                Ok(Some(l)) => keep(l, &mut on_line),
                _ => err_open = false,
            },
            s = child.wait(), if !out_open && !err_open => break s.map_err(|source| CommandError::Wait { command: shown.clone(), source })?,
            _ = &mut deadline => {
                kill_group(pgid);
                let _ = child.wait().await;
                return Err(CommandError::Timeout { command: shown, limit, tail: render_tail(&tail) });
            }
            _ = cancel.cancelled() => {
                kill_group(pgid);
                let _ = child.wait().await;
                return Err(CommandError::Aborted { command: shown });
            }
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(CommandError::Failed {
            command: shown,
            status,
            tail: render_tail(&tail),
        })
    }
}

fn kill_group(pgid: Option<Pid>) {
    if let Some(p) = pgid {
        let _ = killpg(p, Signal::SIGKILL);
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn render_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output:\n  {}", tail.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[tokio::test]
    async fn output_is_captured_and_failure_explained() {
        let mut lines = Vec::new();
        let cancel = CancellationToken::new();
        let r = run(
            &argv(&["sh", "-c", "echo one; echo two >&2; echo $GREETING; exit 3"]),
            Path::new("."),
            &[("GREETING".into(), "hi".into())],
            Duration::from_secs(10),
            &cancel,
            |l| lines.push(l),
        )
        .await;
        let err = r.unwrap_err();
        assert!(matches!(err, CommandError::Failed { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("hi"), "{err}");
        lines.sort();
        assert_eq!(lines, vec!["hi", "one", "two"]);
    }

    #[tokio::test]
    async fn time_limit_kills_the_command() {
        let cancel = CancellationToken::new();
        let r = run(
            &argv(&["sleep", "30"]),
            Path::new("."),
            &[],
            Duration::from_millis(200),
            &cancel,
            |_| {},
        )
        .await;
        let err = r.unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains("did not finish within 0.2s"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn success_is_ok() {
        let cancel = CancellationToken::new();
        assert!(run(
            &argv(&["true"]),
            Path::new("."),
            &[],
            Duration::from_secs(5),
            &cancel,
            |_| {}
        )
        .await
        .is_ok());
    }
}
