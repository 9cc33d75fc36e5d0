//! A new user's release with a schema change, under live traffic: users
//! (each with its own `x-user` and keep-alive connection) read and write
//! `/items` through the live listener the whole time, while v2's expand
//! adds a column and a concurrent index, the switch happens, and the
//! contract drops the old column once v1 is stopped; then v3's expand runs
//! while another session holds the table in a 15 s transaction. Not one
//! live request may fail, and the longest stall during the expand with the
//! competing transaction must stay within lock_timeout plus one request's
//! time (the longest request of the same deploy without it, at least 50 ms).

use crate::migrate::{last_deploy, router, step, write};
use crate::pg::PgServer;
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default `deploy.migrations.lock_timeout`.
const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the competing transaction holds `items`.
const HOLD: Duration = Duration::from_secs(15);
/// Live users, each sending one request after the other.
const USERS: usize = 3;
/// The least "one request's time" counts as: a quiet run's longest request
/// can be a few ms, and a loaded 2-core machine's scheduler adds tens.
const ONE_REQUEST_FLOOR: Duration = Duration::from_millis(50);
/// At most this many requests per user (a bound, not the expected count).
const MAX_REQUESTS: usize = 20_000;

/// One live request: when it started, how long it took, and how it ended.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    took: Duration,
    outcome: Result<u16, String>,
}

/// Users writing and reading `/items` until `stop`.
struct Traffic {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..USERS)
            .map(|u| {
                let (stop, samples, url) = (stop.clone(), samples.clone(), url.clone());
                tokio::spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                    for i in 0..MAX_REQUESTS {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let post = i % 2 == 0;
                        let req = http::Request::builder()
                            .method(if post { "POST" } else { "GET" })
                            .uri(&url)
                            .header("x-user", format!("user-{u}"))
                            .body(Full::new(Bytes::from(format!("user-{u} item {i}"))))
                            .unwrap();
                        let at = Instant::now();
                        let sent = async {
                            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                            let status = resp.status().as_u16();
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("{e:?}"))?;
                            match (post, status) {
                                (true, 201) | (false, 200) => Ok(status),
                                _ => Err(format!(
                                    "{status}: {}",
                                    String::from_utf8_lossy(&body.to_bytes())
                                )),
                            }
                        };
                        let outcome = tokio::time::timeout(Duration::from_secs(20), sent)
                            .await
                            .unwrap_or_else(|_| Err("no answer within 20s".into()));
                        samples.lock().unwrap().push(Sample {
                            at,
                            took: at.elapsed(),
                            outcome,
                        });
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            samples,
            tasks,
        }
    }

    /// The longest request that started in `window`, and how many did.
    fn longest(&self, window: (Instant, Instant)) -> (Duration, usize) {
        let s = self.samples.lock().unwrap();
        let within: Vec<&Sample> = s
            .iter()
            .filter(|x| x.at >= window.0 && x.at <= window.1)
            .collect();
        (
            within.iter().map(|x| x.took).max().unwrap_or_default(),
            within.len(),
        )
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}

/// `bluegreen ARGS` against `router`, off the async threads (the traffic
/// runs on them): (exit code, stdout + stderr, when it started and ended).
async fn cli(router: &RouterProc, args: &[&str]) -> (i32, String, (Instant, Instant)) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env("BLUEGREEN_ADMIN", router.admin_url())
        .env("BLUEGREEN_TOKEN", TOKEN);
    let start = Instant::now();
    let out = cmd.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        text,
        (start, Instant::now()),
    )
}

/// Waits until `items` has at least `n` rows (the traffic is flowing).
async fn rows_at_least(pg: &PgServer, n: i64) {
    let c = pg.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        if have >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {have} rows after 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_change_under_live_traffic_and_a_long_transaction_fails_no_request() {
    let pg = PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    write(
        m,
        "0001_items.expand.sql",
        "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);\n",
    );
    // The default lock_timeout; the deadline leaves room for the 15 s holder.
    let router = router(m, &pg.url(), "deadline = \"60s\"").start();
    let (code, out, _) = cli(&router, &["deploy", "v1"]).await;
    assert_eq!(code, 0, "{out}");
    let traffic = Traffic::start(router.url("/items"));
    rows_at_least(&pg, 20).await;

    // v2 writes `title`: the expand adds it with a concurrent index, and
    // lets v2 leave `name` empty; the contract backfills and drops `name`
    // once v1 is stopped.
    write(
        m,
        "0002_title.expand.sql",
        "ALTER TABLE items ADD COLUMN title text;\nALTER TABLE items ALTER COLUMN name DROP NOT NULL;\n",
    );
    write(
        m,
        "0003_title_index.expand.sql",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_title_idx ON items (title);\n",
    );
    write(
        m,
        "0003_title_index.contract.sql",
        "UPDATE items SET title = name WHERE title IS NULL;\nALTER TABLE items DROP COLUMN name;\n",
    );
    let (code, out, quiet) = cli(
        &router,
        &["deploy", "v2", "--env", "BLUEGREEN_APP_ITEMS_COLUMN=title"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let d = last_deploy(&router).await;
    assert_eq!(d["outcome"], "succeeded", "{d}");
    let decommission = step(&d, "decommission")["detail"].as_str().unwrap_or("");
    assert!(
        decommission.contains("applied 0003_title_index.contract.sql"),
        "{decommission}"
    );
    assert_eq!(pg.columns("items").await, ["id", "title"]);
    let (quiet_longest, n_quiet) = traffic.longest(quiet);
    let one_request = quiet_longest.max(ONE_REQUEST_FLOOR);

    // v3's expand meets a transaction that holds `items` for 15 s: each
    // attempt waits at most lock_timeout, then lets the queue drain.
    write(
        m,
        "0004_tag.expand.sql",
        "ALTER TABLE items ADD COLUMN tag text;\n",
    );
    write(
        m,
        "0005_tag_index.expand.sql",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_tag_idx ON items (tag);\n",
    );
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM items")
        .await
        .unwrap();
    let held = Instant::now();
    let release = tokio::spawn(async move {
        tokio::time::sleep(HOLD).await;
        holder.batch_execute("COMMIT").await.unwrap();
        Instant::now()
    });
    let (code, out, busy) = cli(
        &router,
        &["deploy", "v3", "--env", "BLUEGREEN_APP_ITEMS_COLUMN=title"],
    )
    .await;
    let released = release.await.unwrap();
    assert_eq!(code, 0, "{out}");
    let d = last_deploy(&router).await;
    let expand = step(&d, "expand")["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        expand.contains("applied 2 expand file(s): 0004_tag.expand.sql, 0005_tag_index.expand.sql"),
        "{expand}"
    );
    assert!(
        busy.1 > released && released.duration_since(held) >= HOLD,
        "the expand could only finish after the holder committed"
    );
    assert!(
        d.to_string()
            .contains("attempt(s) before waited longer than lock_timeout (200ms)"),
        "the deploy log says the expand retried: {d}"
    );
    assert_eq!(
        pg.columns("items").await,
        ["id", "title", "tag"],
        "the expand ran once the holder committed"
    );
    let (stall, n_busy) = traffic.longest((busy.0, released));

    let samples = traffic.finish().await;
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    println!(
        "live requests: {} ({} failed); longest stall during the v2 deploy (no competing lock): {} ms over {n_quiet} requests; during v3's expand with a {} s competing transaction: {} ms over {n_busy} requests (lock_timeout {} ms)",
        samples.len(),
        failed.len(),
        quiet_longest.as_millis(),
        HOLD.as_secs(),
        stall.as_millis(),
        LOCK_TIMEOUT.as_millis()
    );
    assert!(failed.is_empty(), "failed live requests: {failed:?}");
    assert!(
        n_busy > 20,
        "traffic kept flowing while the table was held: {n_busy} requests"
    );
    assert!(
        stall <= LOCK_TIMEOUT + one_request,
        "longest stall {stall:?} > lock_timeout {LOCK_TIMEOUT:?} + one request {one_request:?}"
    );
}
