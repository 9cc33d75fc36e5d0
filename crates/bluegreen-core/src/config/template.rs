//! Command lines in the config (hooks, the supervisor's run command, smoke
//! commands): split without a shell, `{placeholder}`s checked against the
//! ones each command allows, the program found.

use super::checker::Checker;
use std::path::{Path, PathBuf};

/// A command line split into arguments, with `{placeholder}`s filled in per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    pub source: String,
    pub argv: Vec<String>,
}

impl CommandTemplate {
    /// Fills in placeholders; names not in `vars` are left as written.
    pub fn render(&self, vars: &[(&str, &str)]) -> Vec<String> {
        self.argv.iter().map(|a| fill(a, vars)).collect()
    }
}

/// Replaces `{name}` by its value for each `(name, value)`.
pub fn fill(s: &str, vars: &[(&str, &str)]) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Names written as `{name}` (lower-case letters and `_`) in `s`.
pub fn placeholders(s: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end)
                if end > 0
                    && after[..end]
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_') =>
            {
                found.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            _ => rest = after,
        }
    }
    found
}

/// Placeholders of hook commands.
pub const HOOK_VARS: &[&str] = &["env", "version", "upstreams", "bluegreen"];
/// Placeholders of the supervisor's run command.
pub const RUN_VARS: &[&str] = &["env", "version", "port", "host", "address", "bluegreen"];
/// Placeholders of smoke-test commands.
pub const SMOKE_COMMAND_VARS: &[&str] = &["env", "version", "preview_url", "bluegreen"];
/// Placeholders inside HTTP smoke tests.
pub const SMOKE_HTTP_VARS: &[&str] = &["env", "version"];

impl Checker {
    pub(super) fn template(
        &mut self,
        key: &str,
        raw: &str,
        allowed: &[&str],
        base: &Path,
    ) -> Option<CommandTemplate> {
        let Some(argv) = shlex::split(raw).filter(|a| !a.is_empty()) else {
            self.issue(
                key,
                format!("{raw:?} is not a command line (empty, or an unclosed quote)"),
            );
            return None;
        };
        let mut ok = self.text_vars(key, raw, allowed);
        if placeholders(&argv[0]).is_empty() {
            if let Err(why) = find_program(&argv[0], base) {
                self.issue(key, why);
                ok = false;
            }
        }
        ok.then(|| CommandTemplate {
            source: raw.to_string(),
            argv,
        })
    }

    /// Reports placeholders not in `allowed`; true when there were none.
    pub(super) fn text_vars(&mut self, key: &str, s: &str, allowed: &[&str]) -> bool {
        let mut ok = true;
        for name in placeholders(s) {
            if !allowed.contains(&name.as_str()) {
                self.issue(
                    key,
                    format!(
                        "unknown placeholder {{{name}}}; allowed here: {}",
                        list(allowed)
                    ),
                );
                ok = false;
            }
        }
        ok
    }

    pub(super) fn fraction(&mut self, key: &str, raw: Option<f64>, default: f64) -> f64 {
        match raw {
            None => default,
            Some(v) if (0.0..=1.0).contains(&v) => v,
            Some(v) => {
                self.issue(
                    key,
                    format!("{v} is out of range: expected a fraction from 0.0 to 1.0 (0.05 = 5%)"),
                );
                default
            }
        }
    }

    pub(super) fn ratio(&mut self, key: &str, raw: Option<f64>) -> Option<f64> {
        match raw {
            Some(v) if !(1.0..=1000.0).contains(&v) => {
                self.issue(key, format!("{v} is out of range: expected a ratio from 1.0 to 1000 (1.5 = 50% worse than the old side)"));
                None
            }
            other => other,
        }
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds a program as the OS would: a path (relative to `base`) or a name on `PATH`.
fn find_program(program: &str, base: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let path = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            base.join(program)
        };
        return match std::fs::metadata(&path) {
            Err(_) => Err(format!(
                "program {program:?} does not exist (looked for {})",
                path.display()
            )),
            Ok(_) if !executable(&path) => {
                Err(format!("program {} is not executable", path.display()))
            }
            Ok(_) => Ok(path),
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program {program:?} was not found on PATH"))
}
