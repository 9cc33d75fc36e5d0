//! The linter and the one check on PostgreSQL and SQLite files: what each
//! rule catches, with its line, and what must parse.

use super::*;

fn rules(sql: &str, phase: Phase) -> Vec<(String, u64)> {
    lint(Path::new("m.sql"), sql, phase, Flavor::Postgres)
        .unwrap()
        .into_iter()
        .map(|f| (f.rule, f.line))
        .collect()
}

fn file(name: &str) -> MigrationFile {
    let (number, n, phase) = parse_name(name).unwrap();
    MigrationFile {
        number,
        name: n,
        phase,
        path: PathBuf::from(name),
    }
}

#[test]
fn additive_lock_friendly_changes_pass() {
    let sql = "CREATE TABLE items (id bigint PRIMARY KEY, name text);\n\
               ALTER TABLE users ADD COLUMN currency text DEFAULT 'EUR' NOT NULL;\n\
               ALTER TABLE users ADD COLUMN nickname text;\n\
               ALTER TABLE users ALTER COLUMN name DROP NOT NULL;\n\
               ALTER TABLE users ADD CONSTRAINT fk FOREIGN KEY (org) REFERENCES orgs (id) NOT VALID;\n\
               ALTER TABLE users ALTER COLUMN nickname SET DEFAULT '';\n\
               INSERT INTO items VALUES (1, 'a');";
    assert_eq!(rules(sql, Phase::Expand), vec![]);
    assert_eq!(
        rules(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_nick ON users (nickname);",
            Phase::Expand
        ),
        vec![]
    );
    assert_eq!(
        rules(
            "DROP INDEX CONCURRENTLY IF EXISTS users_nick;",
            Phase::Expand
        ),
        vec![]
    );
}

#[test]
fn what_the_old_version_cannot_live_with_is_named_with_its_line() {
    let sql = "ALTER TABLE users DROP COLUMN email;\n\
               ALTER TABLE users RENAME COLUMN name TO full_name;\n\
               ALTER TABLE users RENAME TO customers;\n\
               ALTER TABLE users ADD COLUMN tenant bigint NOT NULL;\n\
               ALTER TABLE users ALTER COLUMN plan DROP DEFAULT;\n\
               DROP TABLE sessions;\n\
               DROP FUNCTION f();\n\
               DROP TRIGGER t ON users;\n\
               ALTER TABLE users DROP CONSTRAINT c CASCADE;\n\
               ALTER TABLE users DISABLE TRIGGER ALL;";
    let got = rules(sql, Phase::Expand);
    for (rule, line) in [
        ("ban-drop-column", 1),
        ("renaming-column", 2),
        ("renaming-table", 3),
        ("adding-required-field", 4),
        ("ban-drop-default", 5),
        ("ban-drop-table", 6),
        ("ban-drop-function", 7),
        ("ban-drop-trigger", 8),
        ("ban-drop-constraint", 9),
        ("ban-disable-trigger", 10),
    ] {
        assert!(
            got.contains(&(rule.to_string(), line)),
            "{rule} at {line}: {got:?}"
        );
    }
    assert_eq!(
        rules(sql, Phase::Contract),
        vec![],
        "a contract file may drop"
    );
    let f = &lint(
        Path::new("0002_x.expand.sql"),
        "\n\nALTER TABLE users DROP COLUMN email;",
        Phase::Expand,
        Flavor::Postgres,
    )
    .unwrap()[0];
    let text = f.to_string();
    assert!(
        text.starts_with("0002_x.expand.sql:3: ALTER TABLE users DROP COLUMN email"),
        "{text}"
    );
    assert!(text.contains("the running version breaks"), "{text}");
    assert!(text.contains("contract file"), "{text}");
}

#[test]
fn what_stalls_live_traffic_is_refused_in_every_file_with_the_safe_way() {
    for (sql, rule) in [
        (
            "CREATE INDEX ON users(email);",
            "require-concurrent-index-creation",
        ),
        (
            "CREATE UNIQUE INDEX u ON users(email);",
            "require-concurrent-index-creation",
        ),
        (
            "ALTER TABLE users ADD CONSTRAINT u UNIQUE (email);",
            "disallowed-unique-constraint",
        ),
        (
            "ALTER TABLE a ADD CONSTRAINT fk FOREIGN KEY (b) REFERENCES b (id);",
            "adding-foreign-key-constraint",
        ),
        (
            "ALTER TABLE a ADD CONSTRAINT c CHECK (n > 0);",
            "constraint-missing-not-valid",
        ),
        (
            "ALTER TABLE users ADD COLUMN uid uuid DEFAULT gen_random_uuid();",
            "adding-field-with-default",
        ),
        (
            "ALTER TABLE users ADD PRIMARY KEY (id);",
            "adding-serial-primary-key-field",
        ),
        ("TRUNCATE users CASCADE;", "ban-truncate-cascade"),
        (
            "ALTER TABLE users ALTER COLUMN age TYPE bigint;",
            "changing-column-type",
        ),
        (
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            "adding-not-nullable-field",
        ),
        ("LOCK TABLE users IN ACCESS EXCLUSIVE MODE;", "lock-table"),
        ("VACUUM FULL users;", "vacuum-full"),
        ("CLUSTER users USING users_pkey;", "cluster"),
        ("REINDEX TABLE users;", "require-concurrent-reindex"),
        (
            "DROP INDEX users_email_idx;",
            "require-concurrent-index-deletion",
        ),
    ] {
        for phase in [Phase::Expand, Phase::Contract] {
            let got = rules(sql, phase);
            assert!(
                got.iter().any(|(r, _)| r == rule),
                "{sql} ({phase:?}): want {rule}, got {got:?}"
            );
        }
    }
    let f = &lint(
        Path::new("m.sql"),
        "CREATE INDEX i ON users(email);",
        Phase::Expand,
        Flavor::Postgres,
    )
    .unwrap()[0];
    assert!(f.why.starts_with("live traffic stalls"), "{f}");
    assert!(f.instead.contains("a file of its own"), "{f}");
    assert_eq!(
        f.rewrite.as_deref(),
        Some("CREATE INDEX concurrently i ON users(email)"),
        "{f}"
    );
}

#[test]
fn postgresql_the_old_parser_refused_now_parses() {
    let sql = "DROP INDEX CONCURRENTLY users_email_idx;\n\
               REINDEX INDEX CONCURRENTLY users_email_idx;\n\
               ALTER TABLE users SET SCHEMA archive;\n\
               ALTER TABLE users ALTER COLUMN id DROP IDENTITY IF EXISTS;\n\
               CREATE TABLE m (at date) PARTITION BY RANGE (at);\n\
               DO $$ BEGIN RAISE NOTICE 'a;b'; END $$;";
    let st = shape(Path::new("m.sql"), sql, Flavor::Postgres).unwrap();
    assert_eq!(st.statements.len(), 6, "{st:?}");
    assert_eq!(st.outside_transaction.unwrap().line, 1);
}

#[test]
fn a_file_that_does_not_parse_names_itself_and_the_line() {
    let e = lint(
        Path::new("0003_bad.expand.sql"),
        "SELECT 1;\nALTER TABLE users DROPP COLUMN x;",
        Phase::Expand,
        Flavor::Postgres,
    )
    .unwrap_err();
    assert!(e.starts_with("0003_bad.expand.sql:2:"), "{e}");
}

#[test]
fn statements_are_split_as_written_with_their_lines() {
    let sql = "-- a comment; not a statement\nCREATE TABLE t (a text DEFAULT 'x;y');\n\n\
               CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
               ALTER TABLE t ADD COLUMN \"b;c\" int;;\nSELECT 'é', 1";
    let got: Vec<(u64, String)> = shape(Path::new("m.sql"), sql, Flavor::Postgres)
        .unwrap()
        .statements
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
fn the_one_check_refuses_what_the_deploy_cannot_run() {
    let p = check_file(
        &file("0002_x.expand.sql"),
        "BEGIN;\nALTER TABLE a ADD b int;\nCOMMIT;",
        Flavor::Postgres,
    );
    assert!(
        matches!(&p[0], Problem::Refused(s) if s.starts_with("0002_x.expand.sql:1: BEGIN: transaction control is not allowed")),
        "{p:?}"
    );
    let p = check_file(
        &file("0003_i.expand.sql"),
        "CREATE INDEX CONCURRENTLY i ON a (x);\nALTER TABLE a ADD c int;",
        Flavor::Postgres,
    );
    assert!(
        matches!(&p[0], Problem::Refused(s) if s.contains("must be alone in its file")),
        "{p:?}"
    );
    let p = check_file(
        &file("0004_ok.expand.sql"),
        "CREATE INDEX CONCURRENTLY i ON a (x);",
        Flavor::Postgres,
    );
    assert_eq!(p, vec![]);
    let p = check_file(
        &file("0005_bad.contract.sql"),
        "ALTER TABEL a;",
        Flavor::Postgres,
    );
    assert!(
        matches!(&p[0], Problem::Broken(s) if s.starts_with("0005_bad.contract.sql:1:")),
        "{p:?}"
    );
}

#[test]
fn sqlite_keeps_its_own_parser_bodies_and_rules() {
    let sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET n = CASE WHEN 1 THEN 2 ELSE 3 END;\n  INSERT INTO c VALUES (1);\nEND;\nCREATE INDEX i ON a (x);";
    let got = shape(Path::new("m.sql"), sql, Flavor::Sqlite).unwrap();
    assert_eq!(got.statements.len(), 2, "{got:?}");
    assert!(got.statements[0].text.ends_with("END"), "{got:?}");
    assert_eq!(got.statements[1].line, 5);
    assert_eq!(got.transaction_control, None);
    let tx = shape(
        Path::new("m.sql"),
        "ALTER TABLE a ADD b int;\nCOMMIT;\nBEGIN;",
        Flavor::Sqlite,
    )
    .unwrap()
    .transaction_control
    .unwrap();
    assert_eq!(tx.line, 2);
    let found = lint(
        Path::new("m.sql"),
        "CREATE INDEX i ON a (x);\nALTER TABLE a DROP COLUMN b;",
        Phase::Expand,
        Flavor::Sqlite,
    )
    .unwrap();
    let rules: Vec<(&str, u64)> = found.iter().map(|f| (f.rule.as_str(), f.line)).collect();
    assert_eq!(rules, [("drop-column", 2)]);
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

#[test]
fn squawk_ignore_waives_squawk_rules_only() {
    let waived = "-- squawk-ignore ban-drop-column\nALTER TABLE users DROP COLUMN legacy;";
    assert_eq!(rules(waived, Phase::Expand), vec![]);
    let ours = "-- squawk-ignore lock-table\nLOCK TABLE users;";
    assert_eq!(
        rules(ours, Phase::Expand),
        vec![("lock-table".to_string(), 2)]
    );
}
