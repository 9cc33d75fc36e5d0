//! The one check: what `migrate lint` and the deploy's expand step both
//! run on a file, so that whatever the deploy would refuse, lint refuses
//! first, in the same words.

use super::{lint, shape, Finding, Flavor, MigrationFile};

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// It cannot be read: it does not parse (file:line:column and why).
    Broken(String),
    /// Its shape cannot run as bluegreen runs files.
    Refused(String),
    /// A statement that stalls live traffic or breaks the running version.
    Finding(Finding),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Broken(s) | Problem::Refused(s) => f.write_str(s),
            Problem::Finding(x) => x.fmt(f),
        }
    }
}

/// Every problem of one file, in the order the deploy would meet them.
pub fn check_file(file: &MigrationFile, sql: &str, flavor: Flavor) -> Vec<Problem> {
    let path = file.path.display();
    let shape = match shape(&file.path, sql, flavor) {
        Ok(s) => s,
        Err(e) => return vec![Problem::Broken(e)],
    };
    let mut out = Vec::new();
    if let Some(st) = &shape.transaction_control {
        out.push(Problem::Refused(format!(
            "{path}:{}: {}: transaction control is not allowed: bluegreen runs each file in a transaction of its own, together with its row in bluegreen_migrations",
            st.line,
            one_line(&st.text)
        )));
    }
    if let Some(st) = &shape.outside_transaction {
        if shape.statements.len() > 1 {
            out.push(Problem::Refused(format!(
                "{path}:{}: {}: cannot run inside a transaction, so it must be alone in its file (this one has {} statements): put it in a file of its own",
                st.line,
                one_line(&st.text),
                shape.statements.len()
            )));
        }
    }
    match lint(&file.path, sql, file.phase, flavor) {
        Ok(found) => out.extend(found.into_iter().map(Problem::Finding)),
        Err(e) => out.push(Problem::Broken(e)),
    }
    out
}

fn one_line(s: &str) -> String {
    super::shorten(s)
}
