//! PostgreSQL files, read by squawk's parser (a full PostgreSQL grammar:
//! `CONCURRENTLY`, `REINDEX`, partitions, `DO` blocks, `$$` bodies) and
//! judged by squawk's lock and compatibility rules plus ours: what squawk
//! leaves to PostgreSQL 19's `REPACK` (`VACUUM FULL`, `CLUSTER`) and
//! explicit `LOCK TABLE`.

use super::rules::{self, Class};
use super::{shorten, Finding, Phase, Shape, SqlStatement};
use squawk_line_index::LineIndex;
use squawk_linter::{Linter, Violation};
use squawk_syntax::ast::{self, AstNode};
use squawk_syntax::{Parse, SourceFile, SyntaxKind, SyntaxNode};
use std::path::Path;

/// A parsed file, or the first parse errors with their lines.
fn parse(file: &Path, sql: &str) -> Result<Parse<SourceFile>, String> {
    let parsed = SourceFile::parse(sql);
    let errors = parsed.errors();
    if errors.is_empty() {
        return Ok(parsed);
    }
    let index = LineIndex::new(sql);
    let lines: Vec<String> = errors
        .iter()
        .take(3)
        .map(|e| {
            let at = index.line_col(e.range().start());
            format!(
                "{}:{}:{}: {}",
                file.display(),
                at.line + 1,
                at.col + 1,
                e.message()
            )
        })
        .collect();
    Err(lines.join("\n"))
}

/// The statement nodes with their text as written (from the first token,
/// comments before it left out; no trailing `;`) and 1-based line.
fn statements(sql: &str, parsed: &Parse<SourceFile>) -> Vec<(ast::Stmt, SqlStatement, usize)> {
    let index = LineIndex::new(sql);
    parsed
        .tree()
        .stmts()
        .filter_map(|st| {
            let node = st.syntax();
            let start = node
                .children_with_tokens()
                .find(|x| !x.kind().is_trivia())?
                .text_range()
                .start();
            let text = sql[usize::from(start)..usize::from(node.text_range().end())]
                .trim_end()
                .trim_end_matches(';')
                .trim_end();
            if text.is_empty() {
                return None;
            }
            let line = u64::from(index.line_col(start).line) + 1;
            Some((
                st,
                SqlStatement {
                    line,
                    text: text.to_string(),
                },
                usize::from(start),
            ))
        })
        .collect()
}

/// The statements of a file as written, or where it does not parse.
pub fn split(file: &Path, sql: &str) -> Result<Vec<SqlStatement>, String> {
    let parsed = parse(file, sql)?;
    Ok(statements(sql, &parsed)
        .into_iter()
        .map(|(_, s, _)| s)
        .collect())
}

/// True when PostgreSQL refuses to run the statement inside a transaction
/// block (`CREATE/DROP INDEX CONCURRENTLY`, `REINDEX … CONCURRENTLY`,
/// `DETACH PARTITION … CONCURRENTLY`, `VACUUM`, `CREATE DATABASE`, …).
fn outside_transaction(st: &ast::Stmt) -> bool {
    let concurrently = || {
        st.syntax()
            .descendants_with_tokens()
            .any(|t| t.kind() == SyntaxKind::CONCURRENTLY_KW)
    };
    match st {
        ast::Stmt::CreateIndex(_)
        | ast::Stmt::DropIndex(_)
        | ast::Stmt::Reindex(_)
        | ast::Stmt::AlterTable(_) => concurrently(),
        ast::Stmt::Vacuum(_)
        | ast::Stmt::CreateDatabase(_)
        | ast::Stmt::DropDatabase(_)
        | ast::Stmt::AlterSystem(_)
        | ast::Stmt::CreateTablespace(_)
        | ast::Stmt::DropTablespace(_) => true,
        _ => false,
    }
}

/// True for `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT` and the like.
fn is_transaction_control(st: &ast::Stmt) -> bool {
    matches!(
        st,
        ast::Stmt::Begin(_)
            | ast::Stmt::Commit(_)
            | ast::Stmt::Rollback(_)
            | ast::Stmt::SavepointCreate(_)
            | ast::Stmt::ReleaseSavepoint(_)
            | ast::Stmt::PrepareTransaction(_)
    )
}

/// The file's statements and what they need from the runner.
pub fn shape(file: &Path, sql: &str) -> Result<Shape, String> {
    let parsed = parse(file, sql)?;
    let all = statements(sql, &parsed);
    let find = |f: fn(&ast::Stmt) -> bool| {
        all.iter()
            .find(|(st, _, _)| f(st))
            .map(|(_, s, _)| s.clone())
    };
    Ok(Shape {
        outside_transaction: find(outside_transaction),
        transaction_control: find(is_transaction_control),
        statements: all.into_iter().map(|(_, s, _)| s).collect(),
    })
}

/// The findings of one file: squawk's rules of the classes that hold in
/// `phase`, and ours.
pub fn lint(file: &Path, sql: &str, phase: Phase) -> Result<Vec<Finding>, String> {
    let parsed = parse(file, sql)?;
    let all = statements(sql, &parsed);
    let in_tx = !all.iter().any(|(st, _, _)| outside_transaction(st));
    let mut linter = Linter::from(rules::enabled());
    // As it will run: a file with CONCURRENTLY runs outside a transaction.
    linter.settings.assume_in_transaction = in_tx;
    let index = LineIndex::new(sql);
    // The statement a finding is in, with the offset its text starts at.
    let of = |offset: usize| -> Option<(usize, &SqlStatement)> {
        all.iter()
            .find(|(st, _, _)| {
                let r = st.syntax().text_range();
                usize::from(r.start()) <= offset && offset < usize::from(r.end())
            })
            .map(|(_, s, at)| (*at, s))
    };
    let mut out = Vec::new();
    for v in linter.lint(&parsed, sql) {
        let class = rules::class(v.code);
        // squawk reports some rules whatever the set (`unused-ignore`).
        let off = matches!(class, Class::Off(_));
        if off || (class == Class::Compat && phase == Phase::Contract) {
            continue;
        }
        let start = usize::from(v.text_range.start());
        let line = u64::from(index.line_col(v.text_range.start()).line) + 1;
        let statement = of(start).map_or_else(|| shorten(&sql[start..]), |(_, s)| shorten(&s.text));
        out.push(Finding {
            file: file.to_path_buf(),
            line,
            statement,
            rule: v.code.to_string(),
            why: format!("{}: {}", rules::who(class), v.message.trim_end_matches('.')),
            instead: instead(&v, class),
            rewrite: rewrite(&v, of(start)),
        });
    }
    for (st, s, _) in &all {
        if let Some((rule, why, instead)) = own_rule(st) {
            out.push(Finding {
                file: file.to_path_buf(),
                line: s.line,
                statement: shorten(&s.text),
                rule: rule.into(),
                why: format!("{}: {why}", rules::who(Class::Lock)),
                instead: instead.into(),
                rewrite: None,
            });
        }
    }
    out.sort_by_key(|f| f.line);
    Ok(out)
}

/// The safe way: ours for compatibility (two versions share the
/// database), squawk's help for locks.
fn instead(v: &Violation, class: Class) -> String {
    let ours = rules::instead(v.code);
    match (class, ours, &v.help) {
        (Class::Compat, Some(o), _) => o.to_string(),
        (Class::Compat, None, _) => "stop using it in the new version, and do this in a contract file (NNNN_name.contract.sql), which runs once rollback is no longer possible".to_string(),
        (_, _, Some(h)) => match ours {
            Some(o) if v.code == squawk_linter::Rule::AddingNotNullableField => o.to_string(),
            _ => format!("{}{}", h.trim_end_matches('.'), rules::note(v.code)),
        },
        (_, Some(o), None) => o.to_string(),
        (_, None, None) => "see squawk's documentation of this rule".to_string(),
    }
}

/// The statement with squawk's fix applied, when it offers one that stays
/// inside the statement.
fn rewrite(v: &Violation, st: Option<(usize, &SqlStatement)>) -> Option<String> {
    let fix = v.fix.as_ref()?;
    let (begin, st) = st?;
    let end = begin + st.text.len();
    let mut edits: Vec<_> = fix.edits.iter().collect();
    edits.sort_by_key(|e| std::cmp::Reverse(e.text_range.start()));
    let mut text = st.text.clone();
    for e in edits {
        let (s, t) = (
            usize::from(e.text_range.start()),
            usize::from(e.text_range.end()),
        );
        if s < begin || t > end {
            return None;
        }
        text.replace_range(s - begin..t - begin, e.text.as_deref().unwrap_or(""));
    }
    Some(shorten(&text))
}

/// Statements that take a table's strongest lock for their whole run,
/// which squawk leaves to PostgreSQL 19's `REPACK` rule.
fn own_rule(st: &ast::Stmt) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match st {
        ast::Stmt::Lock(_) => (
            "lock-table",
            "LOCK TABLE holds its lock until the file's transaction ends, and every query of the table queues behind it",
            "leave it out: each statement takes the lock it needs, briefly, under bluegreen's lock_timeout with retries",
        ),
        ast::Stmt::Vacuum(v) if v.is_full() => (
            "vacuum-full",
            "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock: no read or write until it ends",
            "plain VACUUM (no lock that stops traffic), or pg_repack / REPACK (CONCURRENTLY) on PostgreSQL 19+, outside the release",
        ),
        ast::Stmt::Cluster(_) => (
            "cluster",
            "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock: no read or write until it ends",
            "pg_repack, or REPACK (CONCURRENTLY) on PostgreSQL 19+, outside the release",
        ),
        _ => return None,
    })
}

/// The tables and views a statement names (to say which one a lock wait
/// was for); empty when it does not parse.
pub fn relations(sql: &str) -> Vec<String> {
    let parsed = SourceFile::parse(sql);
    let mut names: Vec<String> = parsed
        .syntax_node()
        .descendants()
        .filter(|n| {
            matches!(
                n.kind(),
                SyntaxKind::TABLE_NAME_REF | SyntaxKind::RELATION_NAME_REF
            )
        })
        .filter_map(|n: SyntaxNode| n.first_child())
        .map(|p| p.text().to_string())
        .collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}
