//! SQLite files, read by sqlparser's SQLite dialect (squawk knows only
//! PostgreSQL): the compatibility rules of an expand file, and the
//! statements as written. SQLite has no online DDL to speak of: its one
//! writer lock is taken first and waited for at most `lock_timeout`.

use super::{shorten, Finding, SqlStatement};
use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, ObjectType, Spanned, Statement,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;
use std::path::Path;

/// Statements of an expand file the running version cannot live with.
/// A file that does not parse is an error naming the file and the line.
pub fn lint_expand(file: &Path, sql: &str) -> Result<Vec<Finding>, String> {
    let statements = Parser::parse_sql(&SQLiteDialect {}, sql)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let starts: Vec<u64> = split(sql)
        .unwrap_or_default()
        .iter()
        .map(|s| s.line)
        .collect();
    let mut out = Vec::new();
    for (i, st) in statements.iter().enumerate() {
        // The parser's span where it has one, else where the i-th
        // statement's first token is (some statements carry no span).
        let line = match st.span().start.line {
            0 => starts.get(i).copied().unwrap_or(1),
            l => l,
        };
        let text = shorten(&st.to_string());
        let mut flag = |rule: &'static str, why: String, instead: &'static str| {
            out.push(Finding {
                file: file.to_path_buf(),
                line,
                statement: text.clone(),
                rule: rule.into(),
                why,
                instead: instead.into(),
                rewrite: None,
            })
        };
        match st {
            Statement::Drop {
                object_type, names, ..
            } if *object_type != ObjectType::Index => flag(
                "drop",
                format!(
                    "the running version may still use {} {}",
                    format!("{object_type:?}").to_lowercase(),
                    join(names)
                ),
                "stop using it in the new version, and drop it in a contract file (NNNN_name.contract.sql), which runs once rollback is no longer possible",
            ),
            Statement::AlterTable(alter) => {
                let table = alter.name.to_string();
                for op in &alter.operations {
                    lint_alter(&table, op, &mut flag);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The statements of a file as written (so what runs is exactly what the
/// file says), split at semicolons outside strings, quoted names, comments,
/// dollar-quoted bodies and `BEGIN … END` bodies (SQLite triggers,
/// PostgreSQL `BEGIN ATOMIC`).
pub fn split(sql: &str) -> Result<Vec<SqlStatement>, String> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Location, Token, Tokenizer};
    let tokens = Tokenizer::new(&SQLiteDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    // Locations count lines and characters from 1.
    let offset = |l: Location| -> usize {
        let Some(&start) = line_starts.get((l.line as usize).saturating_sub(1)) else {
            return sql.len();
        };
        sql[start..]
            .char_indices()
            .nth((l.column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let mut out = Vec::new();
    let mut current: Option<(Location, usize)> = None;
    let flush = |current: &mut Option<(Location, usize)>, out: &mut Vec<SqlStatement>| {
        if let Some((first, end)) = current.take() {
            out.push(SqlStatement {
                line: first.line,
                text: sql[offset(first)..end].to_string(),
            });
        }
    };
    // Open BEGIN (and CASE inside one) blocks of the current statement.
    let mut depth = 0usize;
    for t in tokens {
        if let Token::Word(w) = &t.token {
            match w.keyword {
                Keyword::BEGIN if current.is_some() => depth += 1,
                Keyword::CASE if depth > 0 => depth += 1,
                Keyword::END if depth > 0 => depth -= 1,
                _ => {}
            }
        }
        match t.token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon if depth == 0 => flush(&mut current, &mut out),
            _ => {
                let end = offset(t.span.end);
                match current.as_mut() {
                    Some((_, e)) => *e = end,
                    None => current = Some((t.span.start, end)),
                }
            }
        }
    }
    flush(&mut current, &mut out);
    Ok(out)
}

/// Transaction control in a file (`BEGIN`, `COMMIT`, `ROLLBACK`,
/// `SAVEPOINT`, …) would end the transaction each file runs in, with its
/// tracking row: the line of the first such statement.
pub fn transaction_control(sql: &str) -> Option<SqlStatement> {
    split(sql).ok()?.into_iter().find(|s| {
        let first = s
            .text
            .split(|c: char| c.is_whitespace() || c == ';')
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        matches!(
            first.as_str(),
            "BEGIN" | "COMMIT" | "ROLLBACK" | "END" | "START" | "SAVEPOINT" | "RELEASE" | "ABORT"
        )
    })
}

/// The tables and views a statement names (to say which one a lock wait
/// was for); empty when it does not parse.
pub fn relations(sql: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(statements) = Parser::parse_sql(&SQLiteDialect {}, sql) {
        let _ = sqlparser::ast::visit_relations(&statements, |r| {
            names.push(r.to_string());
            std::ops::ControlFlow::<()>::Continue(())
        });
        for st in &statements {
            if let Statement::CreateIndex(ci) = st {
                names.push(ci.table_name.to_string());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn lint_alter(
    table: &str,
    op: &AlterTableOperation,
    flag: &mut impl FnMut(&'static str, String, &'static str),
) {
    match op {
        AlterTableOperation::DropColumn { column_names, .. } => flag(
            "drop-column",
            format!("the running version still reads and writes {table}.{}", join(column_names)),
            "stop using the column in the new version; drop it in a contract file, after the point of no return",
        ),
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => flag(
            "rename-column",
            format!(
                "the running version knows {table}.{old_column_name}, not {new_column_name}"
            ),
            "add the new column, have the new version write both and read the new one (backfill it), and drop the old one in a contract file",
        ),
        AlterTableOperation::RenameTable { .. } => flag(
            "rename-table",
            format!("the running version still uses the table {table} by that name"),
            "create the new table (or a view of the old one under the new name), write both, and drop the old name in a contract file",
        ),
        AlterTableOperation::AlterColumn { column_name, op } => match op {
            AlterColumnOperation::SetDataType { data_type, .. } => flag(
                "change-type",
                format!("the running version reads and writes {table}.{column_name} as its current type, not {data_type}"),
                "add a column of the new type, write both and backfill, switch reads in the new version, and drop the old column in a contract file",
            ),
            AlterColumnOperation::SetNotNull => flag(
                "set-not-null",
                format!("the running version may insert rows without {table}.{column_name}"),
                "add CHECK (column IS NOT NULL) NOT VALID and VALIDATE it once the new version fills the column; SET NOT NULL in a contract file",
            ),
            AlterColumnOperation::DropDefault => flag(
                "drop-default",
                format!("the running version may rely on the default of {table}.{column_name} when it inserts"),
                "keep the default while the old version can run; drop it in a contract file",
            ),
            _ => {}
        },
        AlterTableOperation::AddColumn { column_def, .. } => {
            let has = |want: fn(&ColumnOption) -> bool| {
                column_def.options.iter().any(|o| want(&o.option))
            };
            let not_null = has(|o| matches!(o, ColumnOption::NotNull));
            let default = has(|o| matches!(o, ColumnOption::Default(_)));
            if not_null && !default {
                flag(
                    "not-null-without-default",
                    format!(
                        "the running version inserts into {table} without {}: every insert would fail",
                        column_def.name
                    ),
                    "add the column with a DEFAULT (or nullable), and make it NOT NULL without a default in a contract file",
                );
            }
        }
        _ => {}
    }
}

fn join(names: &[impl std::fmt::Display]) -> String {
    names
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
