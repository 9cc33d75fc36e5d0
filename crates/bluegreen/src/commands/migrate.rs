//! `bluegreen migrate lint`: checks a migrations directory before anything
//! runs: the files' names, and that every expand file holds only what the
//! running (old) version can live with.

use super::*;
use bluegreen_core::migration::{lint_expand, scan, Phase};

/// `bluegreen migrate lint [DIR]`: exit 0 when clean, 1 with a finding per
/// statement an expand file must not run, 2 when a name or a statement
/// cannot be read.
pub fn lint(dir: &Path) -> anyhow::Result<ExitCode> {
    let files = match scan(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let (mut findings, mut broken) = (0, 0);
    for f in &files {
        let sql = std::fs::read_to_string(&f.path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.path.display()))?;
        match (f.phase, lint_expand(&f.path, &sql)) {
            (_, Err(e)) => {
                eprintln!("error: {e}");
                broken += 1;
            }
            (Phase::Expand, Ok(found)) => {
                for x in &found {
                    println!("{x}\n");
                }
                findings += found.len();
            }
            // A contract file may do anything: it runs once nothing old is left.
            (Phase::Contract, Ok(_)) => {}
        }
    }
    let expand = files.iter().filter(|f| f.phase == Phase::Expand).count();
    println!(
        "{} file(s) in {} ({expand} expand, {} contract): {}",
        files.len(),
        dir.display(),
        files.len() - expand,
        match (findings, broken) {
            (0, 0) => "ok".to_string(),
            (n, 0) => format!("{n} statement(s) the running version cannot live with"),
            (_, b) => format!("{b} file(s) that do not parse"),
        }
    );
    Ok(ExitCode::from(match (findings, broken) {
        (_, b) if b > 0 => EXIT_CONFIG,
        (0, _) => 0,
        _ => EXIT_ERROR,
    }))
}
