//! Database migrations that rollback survives: the files of a migrations
//! directory (`NNNN_name.expand.sql`, `NNNN_name.contract.sql`) and the
//! linter that keeps an expand file to what the running (old) version can
//! live with. Parsed with a real SQL parser (sqlparser, PostgreSQL
//! dialect), so a statement is judged by what it does, not by its text.
//! Pure: the caller reads the files.

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, ObjectType, Spanned, Statement,
};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use std::path::{Path, PathBuf};

/// The SQL the files are written in: the database's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Postgres,
    Sqlite,
}

impl Flavor {
    fn dialect(self) -> Box<dyn Dialect> {
        match self {
            Flavor::Postgres => Box::new(PostgreSqlDialect {}),
            Flavor::Sqlite => Box::new(SQLiteDialect {}),
        }
    }
}

/// When a file runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the new version is deployed: additive, backward-compatible.
    Expand,
    /// Once rollback is no longer possible: the destructive part.
    Contract,
}

impl Phase {
    /// Lower-case name, as in file names and the tracking table.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

/// One migration file, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFile {
    pub number: u32,
    pub name: String,
    pub phase: Phase,
    pub path: PathBuf,
}

impl MigrationFile {
    /// `0002_add_title`: the name recorded in the tracking table (with the phase).
    pub fn id(&self) -> String {
        format!("{:04}_{}", self.number, self.name)
    }

    /// `0002_add_title.expand.sql`.
    pub fn file_name(&self) -> String {
        format!("{}.{}.sql", self.id(), self.phase.as_str())
    }
}

/// One statement of a file, as written, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStatement {
    /// 1-based.
    pub line: u64,
    pub text: String,
}

/// A statement an expand file must not run, and the way to do it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
    /// The statement, on one line, shortened.
    pub statement: String,
    pub rule: &'static str,
    /// Why the running version cannot live with it.
    pub why: String,
    /// The expand/contract way.
    pub instead: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}\n  {}: {}\n  instead: {}",
            self.file.display(),
            self.line,
            self.statement,
            self.rule,
            self.why,
            self.instead
        )
    }
}

/// The files of `dir` (sorted by number, expand before contract), or what is
/// wrong with their names. Blocking: reads the directory.
pub fn scan(dir: &Path) -> Result<Vec<MigrationFile>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("migrations dir {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !file.ends_with(".sql") {
            continue;
        }
        match parse_name(file) {
            Some((number, name, phase)) => files.push(MigrationFile {
                number,
                name,
                phase,
                path,
            }),
            None => problems.push(format!(
                "{}: not a migration name: expected NNNN_name.expand.sql or NNNN_name.contract.sql",
                path.display()
            )),
        }
    }
    files.sort_by(|a, b| (a.number, a.phase, &a.name).cmp(&(b.number, b.phase, &b.name)));
    for pair in files.windows(2) {
        if pair[0].number == pair[1].number && pair[0].phase == pair[1].phase {
            problems.push(format!(
                "{} and {}: two {:?} files numbered {:04}",
                pair[0].path.display(),
                pair[1].path.display(),
                pair[0].phase,
                pair[0].number
            ));
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems.join("\n"))
    }
}

/// `0007_add_currency.expand.sql` → (7, "add_currency", Expand).
fn parse_name(file: &str) -> Option<(u32, String, Phase)> {
    let (stem, phase) = if let Some(s) = file.strip_suffix(".expand.sql") {
        (s, Phase::Expand)
    } else {
        (file.strip_suffix(".contract.sql")?, Phase::Contract)
    };
    let (digits, name) = stem.split_once('_')?;
    let ok_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || !ok_name {
        return None;
    }
    Some((digits.parse().ok()?, name.to_string(), phase))
}

/// Statements of an expand file the running version cannot live with.
/// A file that does not parse is an error naming the file and the line.
pub fn lint_expand(file: &Path, sql: &str, flavor: Flavor) -> Result<Vec<Finding>, String> {
    let statements = Parser::parse_sql(&*flavor.dialect(), sql)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let starts: Vec<u64> = split(sql, flavor)
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
                rule,
                why,
                instead,
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
pub fn split(sql: &str, flavor: Flavor) -> Result<Vec<SqlStatement>, String> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Location, Token, Tokenizer};
    let tokens = Tokenizer::new(&*flavor.dialect(), sql)
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
pub fn transaction_control(sql: &str, flavor: Flavor) -> Option<SqlStatement> {
    split(sql, flavor).ok()?.into_iter().find(|s| {
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

/// True for statements PostgreSQL refuses inside a transaction block
/// (`CREATE INDEX CONCURRENTLY` and the like), judged by their first words.
pub fn needs_no_transaction(statement: &str) -> bool {
    let words: Vec<String> = statement
        .split_whitespace()
        .take(4)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
            | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
            | ["DROP", "INDEX", "CONCURRENTLY", ..]
            | ["REINDEX", _, "CONCURRENTLY", ..]
            | ["VACUUM", ..]
    )
}

/// The tables and views a statement names (to say which one a lock wait
/// was for); empty when it does not parse.
pub fn relations(sql: &str, flavor: Flavor) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(statements) = Parser::parse_sql(&*flavor.dialect(), sql) {
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

/// A statement on one line, at most 120 characters.
fn shorten(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str) -> Vec<(&'static str, u64)> {
        lint_expand(Path::new("m.sql"), sql, Flavor::Postgres)
            .unwrap()
            .into_iter()
            .map(|f| (f.rule, f.line))
            .collect()
    }

    #[test]
    fn additive_changes_pass() {
        let sql = "CREATE TABLE items (id bigint PRIMARY KEY, name text);\n\
                   ALTER TABLE users ADD COLUMN currency text DEFAULT 'EUR' NOT NULL;\n\
                   ALTER TABLE users ADD COLUMN nickname text;\n\
                   CREATE INDEX CONCURRENTLY users_nick ON users (nickname);\n\
                   DROP INDEX old_idx;\n\
                   ALTER TABLE users ALTER COLUMN nickname SET DEFAULT '';\n\
                   INSERT INTO items VALUES (1, 'a');";
        assert_eq!(rules(sql), vec![]);
    }

    #[test]
    fn what_the_old_version_cannot_live_with_is_named_with_its_line() {
        let sql = "ALTER TABLE users DROP COLUMN email;\n\
                   ALTER TABLE users RENAME COLUMN name TO full_name;\n\
                   ALTER TABLE users RENAME TO customers;\n\
                   ALTER TABLE users ALTER COLUMN age TYPE bigint;\n\
                   ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n\
                   ALTER TABLE users ADD COLUMN tenant bigint NOT NULL;\n\
                   ALTER TABLE users ALTER COLUMN plan DROP DEFAULT;\n\
                   DROP TABLE sessions;";
        assert_eq!(
            rules(sql),
            vec![
                ("drop-column", 1),
                ("rename-column", 2),
                ("rename-table", 3),
                ("change-type", 4),
                ("set-not-null", 5),
                ("not-null-without-default", 6),
                ("drop-default", 7),
                ("drop", 8),
            ]
        );
        let f = &lint_expand(
            Path::new("0002_x.expand.sql"),
            "\n\nALTER TABLE users DROP COLUMN email;",
            Flavor::Postgres,
        )
        .unwrap()[0];
        let text = f.to_string();
        assert!(
            text.starts_with("0002_x.expand.sql:3: ALTER TABLE users DROP COLUMN email"),
            "{text}"
        );
        assert!(text.contains("contract file"), "{text}");
    }

    #[test]
    fn a_file_that_does_not_parse_names_itself() {
        let e = lint_expand(
            Path::new("0003_bad.expand.sql"),
            "ALTER TABLE users DROPP COLUMN x;",
            Flavor::Postgres,
        )
        .unwrap_err();
        assert!(e.starts_with("0003_bad.expand.sql: "), "{e}");
        assert!(e.contains("Line: 1"), "{e}");
    }

    #[test]
    fn statements_are_split_as_written_with_their_lines() {
        let sql = "-- a comment; not a statement\nCREATE TABLE t (a text DEFAULT 'x;y');\n\n\
                   CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   ALTER TABLE t ADD COLUMN \"b;c\" int;;\nSELECT 'é', 1";
        let got: Vec<(u64, String)> = split(sql, Flavor::Postgres)
            .unwrap()
            .into_iter()
            .map(|s| (s.line, s.text))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "CREATE TABLE t (a text DEFAULT 'x;y')".into()),
                (
                    4,
                    "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql".into()
                ),
                (5, "ALTER TABLE t ADD COLUMN \"b;c\" int".into()),
                (6, "SELECT 'é', 1".into()),
            ]
        );
        assert_eq!(
            relations("ALTER TABLE shop.items ADD COLUMN x int", Flavor::Postgres),
            ["shop.items"]
        );
        assert_eq!(
            relations("CREATE INDEX i ON items (x)", Flavor::Postgres),
            ["items"]
        );
        assert_eq!(
            relations(
                "UPDATE items SET a = (SELECT b FROM other)",
                Flavor::Postgres
            ),
            ["items", "other"]
        );
    }

    #[test]
    fn bodies_with_begin_end_stay_whole_and_transaction_control_is_found() {
        let sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET n = CASE WHEN 1 THEN 2 ELSE 3 END;\n  INSERT INTO c VALUES (1);\nEND;\nCREATE INDEX i ON a (x);";
        let got = split(sql, Flavor::Sqlite).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].text.ends_with("END"), "{got:?}");
        assert_eq!(got[1].line, 5);
        assert_eq!(transaction_control(sql, Flavor::Sqlite), None);
        let tx = transaction_control(
            "ALTER TABLE a ADD b int;\nCOMMIT;\nBEGIN;",
            Flavor::Postgres,
        )
        .unwrap();
        assert_eq!(tx.line, 2);
        assert!(needs_no_transaction(
            "create index  concurrently i on a (x)"
        ));
        assert!(needs_no_transaction(
            "CREATE UNIQUE INDEX CONCURRENTLY i ON a (x)"
        ));
        assert!(!needs_no_transaction(
            "CREATE INDEX i ON a (x) -- CONCURRENTLY later"
        ));
        assert!(!needs_no_transaction(
            "INSERT INTO notes VALUES ('CREATE INDEX CONCURRENTLY')"
        ));
    }

    #[test]
    fn names_are_numbered_expand_or_contract_files() {
        assert_eq!(
            parse_name("0001_init.expand.sql"),
            Some((1, "init".into(), Phase::Expand))
        );
        assert_eq!(
            parse_name("0012_drop-email.contract.sql"),
            Some((12, "drop-email".into(), Phase::Contract))
        );
        for bad in [
            "1_x.expand.sql",
            "0001.expand.sql",
            "0001_x.sql",
            "abcd_x.expand.sql",
            "0001_x y.expand.sql",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "0002_b.contract.sql",
            "0001_a.expand.sql",
            "0002_b.expand.sql",
            "README.md",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let files: Vec<String> = scan(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            [
                "0001_a.expand.sql",
                "0002_b.expand.sql",
                "0002_b.contract.sql"
            ]
        );
        std::fs::write(dir.path().join("2_c.expand.sql"), "").unwrap();
        assert!(scan(dir.path())
            .unwrap_err()
            .contains("2_c.expand.sql: not a migration name"));
    }
}
