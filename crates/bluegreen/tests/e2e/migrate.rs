//! Database migrations in the release, against real databases (PostgreSQL
//! started by the test, SQLite) and real app processes (`bluegreen app`
//! with `/items` on the database): expand before the deploy with the old
//! version's smoke tests on the new schema, contract after the old side is
//! stopped, rollback refused past it; a destructive expand, a lock wait, a
//! changed file and `kill -9` in the middle of a migration.

use crate::pg::PgServer;
use crate::support::*;
use std::path::Path;
use std::time::Duration;

/// A supervisor pipeline whose apps use `/items` on `$DATABASE_URL`, with
/// smoke tests that write and read it, and migrations from `dir`.
pub(crate) fn router(dir: &Path, url: &str, more: &str) -> RouterBuilder {
    pipeline(dir, url, more, (closed_port(), closed_port()))
}

fn pipeline(
    dir: &Path,
    url: &str,
    more: &str,
    ports: (std::net::SocketAddr, std::net::SocketAddr),
) -> RouterBuilder {
    RouterBuilder::addrs(vec![ports.0], vec![ports.1])
        .drain("1s")
        .env("DATABASE_URL", url)
        .extra(&format!(
            r#"
[deploy]
deploy_timeout = "10s"
keep_warm = "0s"

[deploy.supervisor]
run = "{{bluegreen}} app --listen {{address}} --name {{env}}"
stop_on_exit = true
stop_grace = "2s"

[deploy.migrations]
dir = "{dir}"
{more}

[[deploy.smoke]]
name = "write an item"
method = "POST"
path = "/items"
body = "smoke {{version}}"
expect_status = 201

[[deploy.smoke]]
name = "read the items"
path = "/items"
expect_status = 200

[deploy.bake]
duration = "300ms"
interval = "100ms"
min_requests = 1000
on_inconclusive = "accept"
"#,
            dir = dir.display()
        ))
}

pub(crate) fn write(dir: &Path, file: &str, sql: &str) {
    std::fs::write(dir.join(file), sql).unwrap();
}

pub(crate) fn step<'a>(deploy: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    deploy["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {deploy}"))
}

pub(crate) async fn last_deploy(router: &RouterProc) -> serde_json::Value {
    let (_, h) = router
        .api("GET", "/api/v1/deploys", None, Some(TOKEN))
        .await;
    let all = h["deploys"].as_array().cloned().unwrap_or_default();
    all.last()
        .cloned()
        .unwrap_or_else(|| panic!("no deploys: {h}"))
}

/// `/items` through the live listener: (status, body).
async fn items(router: &RouterProc) -> (u16, String) {
    get(&h1_client(), &router.url("/items")).await.unwrap()
}

async fn post_item(router: &RouterProc, text: &str) -> u16 {
    let (code, out) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        text,
        &router.url("/items"),
    ]);
    assert_eq!(code, 0, "curl");
    out.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn expand_contract_and_rollback_past_it_on_postgres() {
    let pg = PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    write(
        m,
        "0001_items.expand.sql",
        "CREATE TABLE items (\n  id bigserial PRIMARY KEY,\n  name text NOT NULL\n);\n",
    );
    let router = router(m, &pg.url(), "lock_timeout = \"2s\"").start();

    let (code, out, err) = router.cli(&["deploy", "v1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let d = last_deploy(&router).await;
    let expand = step(&d, "expand")["detail"].as_str().unwrap().to_string();
    assert!(
        expand.contains("applied 1 expand file(s): 0001_items.expand.sql"),
        "{expand}"
    );
    assert!(expand.contains("nothing deployed on blue yet"), "{expand}");
    for (i, text) in ["apple", "pear with spaces", "ünïcode"].iter().enumerate() {
        assert_eq!(post_item(&router, text).await, 201, "item {i}");
    }

    // v2 reads and writes `title`: the expand adds it (and lets v2 leave
    // `name` empty); the contract backfills and drops `name`.
    write(m, "0002_title.expand.sql", "ALTER TABLE items ADD COLUMN title text;\nALTER TABLE items ALTER COLUMN name DROP NOT NULL;\n");
    write(
        m,
        "0002_title.contract.sql",
        "UPDATE items SET title = name WHERE title IS NULL;\nALTER TABLE items DROP COLUMN name;\n",
    );
    let (code, out, err) =
        router.cli(&["deploy", "v2", "--env", "BLUEGREEN_APP_ITEMS_COLUMN=title"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let d = last_deploy(&router).await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    let expand = step(&d, "expand")["detail"].as_str().unwrap().to_string();
    assert!(
        expand.contains("applied 1 expand file(s): 0002_title.expand.sql"),
        "{expand}"
    );
    assert!(
        expand.contains("the live version v1 on green passed 2 smoke test(s)"),
        "{expand}"
    );
    assert!(
        expand.contains("contract after the point of no return: 0002_title.contract.sql"),
        "{expand}"
    );
    let decommission = step(&d, "decommission")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        decommission.contains("stopped green (v1)"),
        "{decommission}"
    );
    assert!(
        decommission.contains("applied 0002_title.contract.sql"),
        "{decommission}"
    );

    assert_eq!(pg.columns("items").await, ["id", "title"]);
    assert_eq!(
        pg.applied().await,
        [
            "0001_items expand v1",
            "0002_title expand v2",
            "0002_title contract v2"
        ]
    );
    // Every item written by v1 (before and during the expand) is there for v2.
    let (status, body) = items(&router).await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["version"], "v2");
    for want in [
        "apple",
        "pear with spaces",
        "ünïcode",
        "smoke v1",
        "smoke v2",
    ] {
        assert!(
            listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i == want),
            "{want} in {body}"
        );
    }

    // v1 would need the dropped column: rollback is refused and says why,
    // with a code of its own (not side_stopped), exit 1 as any refusal.
    let (code, out, err) = router.cli(&["rollback"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("refusing to go back to v1"), "{err}");
    assert!(err.contains("HTTP 409 Conflict, past_contract)"), "{err}");
    assert!(
        err.contains("0002_title.contract.sql") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(router.status().await["live"], "blue", "nothing switched");

    let (code, out, err) = router.cli(&["migrate", "status"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("expand: 2 file(s), 0 pending"), "{out}");
    assert!(
        out.contains("applied   0002_title.contract.sql  by v2"),
        "{out}"
    );
    assert!(out.contains("last contract: v2 (deploy #2)"), "{out}");

    // An applied file edited afterwards: status says so, the next deploy
    // refuses before it runs anything, and v2 stays live.
    write(
        m,
        "0001_items.expand.sql",
        "CREATE TABLE items (id bigserial PRIMARY KEY, name text);\n",
    );
    write(
        m,
        "0003_more.expand.sql",
        "ALTER TABLE items ADD COLUMN more text;\n",
    );
    let (code, out, _) = router.cli(&["migrate", "status"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("changed   0001_items.expand.sql"), "{out}");
    let (code, out, err) =
        router.cli(&["deploy", "v3", "--env", "BLUEGREEN_APP_ITEMS_COLUMN=title"]);
    let err = format!("{out}{err}");
    assert_ne!(code, 0);
    assert!(
        err.contains("0001_items.expand.sql was applied by v1") && err.contains("must not change"),
        "{err}"
    );
    assert_eq!(
        pg.columns("items").await,
        ["id", "title"],
        "0003 did not run"
    );
    assert_eq!(items(&router).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destructive_expand_a_lock_wait_and_a_broken_old_version_stop_the_deploy() {
    let pg = PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    write(
        m,
        "0001_items.expand.sql",
        "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);",
    );
    let router = router(m, &pg.url(), "lock_timeout = \"500ms\"\ndeadline = \"2s\"").start();
    assert_eq!(router.cli(&["deploy", "v1"]).0, 0);

    // A statement v1 cannot live with: refused before anything of the deploy runs.
    write(
        m,
        "0002_bad.expand.sql",
        "ALTER TABLE items ADD COLUMN extra int;\nALTER TABLE items DROP COLUMN name;\n",
    );
    let (code, out, err) = router.cli(&["deploy", "v2"]);
    let err = format!("{out}{err}");
    assert_ne!(code, 0);
    assert!(
        err.contains("0002_bad.expand.sql:2: ALTER TABLE items DROP COLUMN name"),
        "{err}"
    );
    assert!(
        err.contains("drop-column") && err.contains("contract file"),
        "{err}"
    );
    assert_eq!(
        pg.columns("items").await,
        ["id", "name"],
        "the first statement did not run either"
    );
    let d = last_deploy(&router).await;
    assert_eq!(
        step(&d, "deploy")["state"],
        "pending",
        "nothing deployed: {d}"
    );
    assert_eq!(
        get(&h1_client(), &router.url("/")).await.unwrap().1,
        "green v1\n"
    );

    // A lock held by another session past the step's deadline: every
    // attempt gives up after lock_timeout, the file is rolled back, and the
    // error names the table and the session holding it.
    std::fs::remove_file(m.join("0002_bad.expand.sql")).unwrap();
    write(
        m,
        "0002_qty.expand.sql",
        "ALTER TABLE items ADD COLUMN qty int DEFAULT 1;\n",
    );
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (code, out, err) = router.cli(&["deploy", "v2"]);
    let err = format!("{out}{err}");
    assert_ne!(code, 0);
    assert!(err.contains("0002_qty.expand.sql:1"), "{err}");
    assert!(
        err.contains("waited longer than lock_timeout (500ms) for a lock on items"),
        "{err}"
    );
    assert!(
        err.contains("nothing of 0002_qty.expand.sql was applied"),
        "{err}"
    );
    assert!(
        err.contains("attempt(s) until the step's deadline (2s)")
            && err.contains("held by pid ")
            && err.contains("LOCK TABLE items IN ACCESS EXCLUSIVE MODE"),
        "{err}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(pg.columns("items").await, ["id", "name"]);
    assert_eq!(pg.applied().await, ["0001_items expand v1"]);

    // Additive, yet v1 cannot live with it (its smoke item is too long for
    // the new check): the deploy stops before v2 takes traffic.
    write(
        m,
        "0003_short.expand.sql",
        "ALTER TABLE items ADD CONSTRAINT short_names CHECK (length(name) < 5) NOT VALID;\n",
    );
    let (code, out, err) = router.cli(&["deploy", "v2"]);
    let err = format!("{out}{err}");
    assert_ne!(code, 0);
    assert!(
        err.contains("the live version fails its smoke tests on the expanded schema"),
        "{err}"
    );
    assert!(err.contains("write an item"), "{err}");
    let d = last_deploy(&router).await;
    assert_eq!(step(&d, "deploy")["state"], "pending", "{d}");
    assert_eq!(router.status().await["live"], "green");
    assert_eq!(
        pg.applied().await,
        [
            "0001_items expand v1",
            "0002_qty expand v2",
            "0003_short expand v2"
        ],
        "what was applied stays applied (additive)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_survives_kill_9_in_a_migration_and_contracts_after_the_bake() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("migrations");
    std::fs::create_dir(&m).unwrap();
    let db = dir.path().join("app.db");
    let url = format!("sqlite:{}", db.display());
    write(&m, "0001_items.expand.sql", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\nINSERT INTO items (name) VALUES ('seed');\n");
    let state = dir.path().join("state");
    let ports = (closed_port(), closed_port());
    // Migrations applied (and a contract that failed) are told.
    let receiver = crate::notify::Receiver::start().await;
    let hook = format!(
        "\n[[notify]]\nname = \"dba\"\nurl = \"http://{}/m\"\nevents = [\"migration_applied\", \"migration_failed\"]\n",
        receiver.addr
    );
    let build = || pipeline(&m, &url, "", ports).state_dir(&state).extra(&hook);

    // Killed after the file's statements ran, before its commit.
    let mut crashing = build()
        .env("BLUEGREEN_CRASH_AT", "migration:0001_items.expand.sql")
        .start();
    crashing.start_deploy(r#"{"version":"v1"}"#).await;
    let status = crashing.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "killed: {status:?}");
    drop(crashing);

    // The journal rolled the file back; the restarted router applies it once.
    let router = build().start();
    let d = router.wait_deploy_end(Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    let rows = |sql: &str| {
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(sql)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        rows("SELECT count(*) FROM items WHERE name = 'seed'"),
        "1",
        "the seed row once"
    );
    assert_eq!(
        rows("SELECT name || ' ' || phase || ' ' || version FROM bluegreen_migrations"),
        "0001_items expand v1"
    );

    write(
        &m,
        "0002_title.expand.sql",
        "ALTER TABLE items ADD COLUMN title TEXT;\n",
    );
    write(
        &m,
        "0002_title.contract.sql",
        "UPDATE items SET title = name WHERE title IS NULL;\nALTER TABLE items DROP COLUMN name;\n",
    );
    // A second contract file that fails: the first one's change stays, and
    // so does the refusal to go back.
    write(
        &m,
        "0003_cleanup.contract.sql",
        "DROP TABLE no_such_table;\n",
    );
    let (code, out, err) =
        router.cli(&["deploy", "v2", "--env", "BLUEGREEN_APP_ITEMS_COLUMN=title"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, h) = router
        .api("GET", "/api/v1/deploys", None, Some(TOKEN))
        .await;
    let d = h["deploys"].as_array().unwrap().last().unwrap().clone();
    let dec = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["step"] == "decommission")
        .unwrap()["detail"]
        .to_string();
    assert!(
        dec.contains("contract of v2 failed after applying 0002_title.contract.sql"),
        "{dec}"
    );
    assert!(
        dec.contains("0003_cleanup.contract.sql:1: DROP TABLE no_such_table"),
        "{dec}"
    );
    assert_eq!(
        rows("SELECT group_concat(name, ',') FROM pragma_table_info('items')"),
        "id,title"
    );
    let (_, body) = items(&router).await;
    assert!(
        body.contains("\"seed\"") && body.contains("smoke v1"),
        "{body}"
    );
    wait_until(
        Duration::from_secs(20),
        "three migration notices",
        || async { receiver.kinds().len() >= 3 },
    )
    .await;
    assert_eq!(
        receiver.kinds(),
        ["migration_applied", "migration_applied", "migration_failed"]
    );
    let told: Vec<serde_json::Value> = receiver.accepted().iter().map(|d| d.json()).collect();
    let facts = |i: usize| told[i]["data"]["facts"].clone();
    assert_eq!(
        (facts(0)["phase"].as_str(), facts(0)["version"].as_str()),
        (Some("expand"), Some("v1"))
    );
    assert!(
        facts(0)["detail"]
            .as_str()
            .unwrap()
            .contains("0001_items.expand.sql"),
        "{}",
        told[0]
    );
    assert!(
        facts(1)["detail"]
            .as_str()
            .unwrap()
            .contains("0002_title.expand.sql"),
        "{}",
        told[1]
    );
    assert_eq!(facts(2)["phase"], "contract");
    assert!(
        told[2]["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("contract of v2 failed after applying 0002_title.contract.sql"),
        "{}",
        told[2]
    );
    let (code, _, err) = router.cli(&["rollback"]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to go back to v1"), "{err}");
    assert!(err.contains("HTTP 409 Conflict, past_contract)"), "{err}");
    let (code, out, _) = router.cli(&["migrate", "status", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["runner"], "sqlite");
    let states: Vec<String> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["file"].as_str().unwrap(),
                f["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            "0001_items.expand.sql applied",
            "0002_title.expand.sql applied",
            "0002_title.contract.sql applied",
            "0003_cleanup.contract.sql pending"
        ],
        "{v}"
    );
    assert_eq!(v["contracted"]["version"], "v2");
}

/// `bluegreen migrate lint DIR` (with `$DATABASE_URL` when `db`): exit
/// code and stdout + stderr.
fn lint(dir: &Path, url: &str, db: bool) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["migrate", "lint"])
        .arg(dir)
        .env("DATABASE_URL", url);
    if db {
        cmd.args(["--database-url-env", "DATABASE_URL"]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lint_refuses_first_what_the_deploy_refuses_in_the_same_words() {
    let pg = PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    write(
        m,
        "0001_items.expand.sql",
        "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);\n",
    );
    let router = router(m, &pg.url(), "").start();
    assert_eq!(router.cli(&["deploy", "v1"]).0, 0);
    assert_eq!(lint(m, &pg.url(), true).0, Some(0));

    let cases = [
        (
            "0002_tx.expand.sql",
            "BEGIN;\nALTER TABLE items ADD COLUMN a text;\nCOMMIT;\n",
            "0002_tx.expand.sql:1: BEGIN: transaction control is not allowed",
        ),
        (
            "0002_idx.expand.sql",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON items (name);\nALTER TABLE items ADD COLUMN b text;\n",
            "0002_idx.expand.sql:1: CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON items (name): cannot run inside a transaction, so it must be alone in its file",
        ),
        (
            "0002_lock.expand.sql",
            "CREATE INDEX items_name ON items (name);\n",
            "require-concurrent-index-creation: live traffic stalls",
        ),
        (
            "0002_fn.expand.sql",
            "DROP FUNCTION IF EXISTS touch();\n",
            "ban-drop-function: the running version breaks",
        ),
    ];
    for (file, sql, words) in cases {
        write(m, file, sql);
        let (code, out) = lint(m, &pg.url(), false);
        assert_eq!(code, Some(1), "{file}: {out}");
        let line = out
            .lines()
            .find(|l| l.contains(words))
            .unwrap_or_else(|| panic!("{file}: lint does not say {words:?}: {out}"))
            .to_string();
        let (code, dout, derr) = router.cli(&["deploy", "v2"]);
        assert_ne!(code, 0, "{file}");
        let said = format!("{dout}{derr}");
        assert!(
            said.contains(&line),
            "{file}: the deploy does not say {line:?}: {said}"
        );
        assert_eq!(
            pg.applied().await,
            ["0001_items expand v1"],
            "{file}: nothing ran"
        );
        std::fs::remove_file(m.join(file)).unwrap();
    }

    // An applied file edited since: refused by lint against the database,
    // as by the deploy.
    write(
        m,
        "0001_items.expand.sql",
        "CREATE TABLE items (id bigserial PRIMARY KEY, name text);\n",
    );
    let (code, out) = lint(m, &pg.url(), true);
    assert_eq!(code, Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("must not change"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let (code, dout, derr) = router.cli(&["deploy", "v2"]);
    assert_ne!(code, 0);
    assert!(format!("{dout}{derr}").contains(&line), "{dout}{derr}");
    assert!(
        lint(m, &pg.url(), false).0 == Some(0),
        "without the database, an edit is not visible"
    );
}
