//! `bluegreen app`: a tiny upstream for demos and trials. It answers with its
//! name and version so anyone can see which side served a request.
//!
//! Routes: `/` (text), `/version` and `/price` (JSON), `/metrics` (an
//! `app_queue_depth` gauge), `/healthz`, `/smoke`, `/sse` (a
//! server-sent event per second), `/ws` (WebSocket echo), `/items` (a table
//! of a real database, to try migrations: GET lists, POST adds the body;
//! versions of a schema change use another `--items-column`). Everything else is
//! 404. Fault flags (also settable by environment, so a deploy's `--env` can
//! break a version on purpose) make it fail health, smoke tests, or start
//! answering 5xx or slowly after N requests; others make it burn CPU per
//! request, leak memory, or lose sessions, for the bake's judge to catch.

use bluegreen_core::config::migrations::DatabaseUrl;
use bluegreen_core::migration::Flavor;
use bluegreen_pipeline::migrate::db::Db;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Flags of `bluegreen app`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Name shown in every answer, e.g. the side.
    #[arg(long, default_value = "app")]
    pub name: String,
    /// Version shown in every answer.
    #[arg(long = "app-version", default_value = "v1", env = "BLUEGREEN_VERSION")]
    pub version: String,
    /// Answer /healthz with 503.
    #[arg(long, env = "BLUEGREEN_APP_FAIL_HEALTH", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub fail_health: bool,
    /// Answer /smoke with 500.
    #[arg(long, env = "BLUEGREEN_APP_FAIL_SMOKE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub fail_smoke: bool,
    /// Answer / with 500 after this many requests.
    #[arg(long, env = "BLUEGREEN_APP_ERROR_AFTER")]
    pub error_after: Option<u64>,
    /// Answer / with 500 while this file exists: a failure that starts
    /// when a test (or a drill) says so.
    #[arg(long, env = "BLUEGREEN_APP_ERROR_FILE")]
    pub error_file: Option<std::path::PathBuf>,
    /// Answer / with 401 to logged-in users (requests with an `X-User`
    /// header): a release that lost their sessions.
    #[arg(long, env = "BLUEGREEN_APP_LOSE_SESSIONS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub lose_sessions: bool,
    /// Answer / slowly after this many requests...
    #[arg(long, env = "BLUEGREEN_APP_SLOW_AFTER")]
    pub slow_after: Option<u64>,
    /// ...taking this many milliseconds.
    #[arg(long, env = "BLUEGREEN_APP_SLOW_MS", default_value_t = 500)]
    pub slow_ms: u64,
    /// Price in `/price` answers: change it to give a version a real difference
    /// for shadow traffic to find.
    #[arg(long, env = "BLUEGREEN_APP_PRICE", default_value_t = 10)]
    pub price: u64,
    /// The database of `/items`: postgres://… or sqlite:path.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The column of `items` that `/items` reads and writes.
    #[arg(long, env = "BLUEGREEN_APP_ITEMS_COLUMN", default_value = "name")]
    pub items_column: String,
    /// Wait this many milliseconds before listening (a slow boot).
    #[arg(long, env = "BLUEGREEN_APP_BOOT_DELAY_MS", default_value_t = 0)]
    pub boot_delay_ms: u64,
    /// Spend this many milliseconds of CPU per request to /, on a worker
    /// thread after answering (background work: it costs CPU, not latency).
    #[arg(long, env = "BLUEGREEN_APP_CPU_MS", default_value_t = 0)]
    pub cpu_ms: u64,
    /// Grow resident memory by this many MiB a second (a leak), up to 1 GiB.
    #[arg(long, env = "BLUEGREEN_APP_LEAK_MIB_PER_S", default_value_t = 0)]
    pub leak_mib_per_s: u64,
    /// Answer / after this many milliseconds (every request).
    #[arg(long, env = "BLUEGREEN_APP_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// The value `/metrics` gives `app_queue_depth` (a metric of the app's
    /// own, for Prometheus to scrape).
    #[arg(long, env = "BLUEGREEN_APP_QUEUE_DEPTH", default_value_t = 0)]
    pub queue_depth: u64,
}

/// What every request handler needs.
struct App {
    ident: String,
    args: AppArgs,
    served: std::sync::atomic::AtomicU64,
    /// Connected on first use, again after it broke.
    db: tokio::sync::Mutex<Option<Db>>,
    /// `--cpu-ms` work for the burner thread (bounded: extra is dropped).
    burn: Option<std::sync::mpsc::SyncSender<u64>>,
}

/// One thread burning CPU for as long as each request asks.
fn burner() -> std::sync::mpsc::SyncSender<u64> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(10_000);
    std::thread::spawn(move || {
        for ms in rx {
            let end = std::time::Instant::now() + Duration::from_millis(ms);
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                for i in 0..1000u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                }
                std::hint::black_box(x);
            }
        }
    });
    tx
}

/// `--leak-mib-per-s`: memory that is written (so resident) and never freed.
async fn leak(mib_per_s: u64) {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let step = (mib_per_s as usize * 1024 * 1024) / 10;
    while kept.len() * step < 1 << 30 {
        tick.tick().await;
        kept.push(vec![0x5a; step]);
    }
    std::future::pending::<()>().await
}

type AppBody = BoxBody<Bytes, Infallible>;

/// Entry point of `bluegreen app`.
pub fn main(args: AppArgs) -> anyhow::Result<ExitCode> {
    if args.items_column.is_empty()
        || !args
            .items_column
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        anyhow::bail!(
            "--items-column {:?}: lower-case letters and _ only",
            args.items_column
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(args.boot_delay_ms)).await;
        let listener = TcpListener::bind(args.listen).await?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let app = Arc::new(App {
            ident: format!("{} {}", args.name, args.version),
            served: std::sync::atomic::AtomicU64::new(0),
            db: tokio::sync::Mutex::new(None),
            burn: (args.cpu_ms > 0).then(burner),
            args,
        });
        if app.args.leak_mib_per_s > 0 {
            tokio::spawn(leak(app.args.leak_mib_per_s));
        }
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((stream, _)) = r else { continue };
                    let app = app.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let app = app.clone();
                            async move { Ok::<_, Infallible>(route(req, &app).await) }
                        });
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                    });
                }
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                _ = term.recv() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

fn full(s: impl Into<Bytes>) -> AppBody {
    Full::new(s.into()).boxed()
}

fn status(code: u16, body: &str) -> Response<AppBody> {
    Response::builder()
        .status(code)
        .body(full(body.to_string()))
        .expect("valid response")
}

async fn route(req: Request<Incoming>, app: &App) -> Response<AppBody> {
    let ident: Arc<str> = Arc::from(app.ident.as_str());
    match req.uri().path() {
        "/healthz" if app.args.fail_health => status(503, "unhealthy (--fail-health)\n"),
        "/healthz" => Response::new(full("ok\n")),
        "/smoke" if app.args.fail_smoke => status(500, "smoke failure (--fail-smoke)\n"),
        "/smoke" => Response::new(full(format!("smoke ok {ident}\n"))),
        "/version" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(
                serde_json::json!({"name": app.args.name, "version": app.args.version}).to_string(),
            ))
            .expect("valid response"),
        // JSON with a real field (price) and a noisy one (served_at_ns).
        "/price" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(
                serde_json::json!({"item": "widget", "price": app.args.price,
                    "served_at_ns": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0)})
                .to_string(),
            ))
            .expect("valid response"),
        "/items" => items(req, app).await,
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(full(format!(
                "# TYPE app_queue_depth gauge\napp_queue_depth{{version=\"{}\"}} {}\n",
                app.args.version, app.args.queue_depth
            )))
            .expect("valid response"),
        "/sse" => sse(ident),
        "/ws" => websocket(req, ident),
        "/" => {
            let n = app
                .served
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if app.args.error_after.is_some_and(|limit| n > limit) {
                return status(500, "simulated failure (--error-after)\n");
            }
            if let Some(f) = &app.args.error_file {
                if tokio::fs::try_exists(f).await.unwrap_or(false) {
                    return status(500, "simulated failure (--error-file)\n");
                }
            }
            if app.args.lose_sessions && req.headers().contains_key("x-user") {
                return status(401, "who are you? (--lose-sessions)\n");
            }
            if app.args.slow_after.is_some_and(|limit| n > limit) {
                tokio::time::sleep(Duration::from_millis(app.args.slow_ms)).await;
            }
            if app.args.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(app.args.delay_ms)).await;
            }
            if let Some(burn) = &app.burn {
                let _ = burn.try_send(app.args.cpu_ms);
            }
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header("x-served-by", ident.as_ref())
                .body(full(format!("{ident}\n")))
                .expect("valid response")
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found\n"))
            .expect("valid response"),
    }
}

/// `/items`: GET lists the column, POST inserts the body into it.
async fn items(req: Request<Incoming>, app: &App) -> Response<AppBody> {
    let Some(url) = app.args.database_url.as_deref() else {
        return status(404, "no --database-url\n");
    };
    let post = req.method() == http::Method::POST;
    let text = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => return status(400, &format!("body: {e}\n")),
    };
    let mut db = app.db.lock().await;
    if !db.as_ref().is_some_and(Db::is_open) {
        let parsed = match DatabaseUrl::parse(url, "DATABASE_URL", std::path::Path::new(".")) {
            Ok(u) => u,
            Err(e) => return status(500, &format!("{e}\n")),
        };
        match Db::connect(&parsed, Duration::from_secs(5), false).await {
            Ok(d) => *db = Some(d),
            Err(e) => return status(503, &format!("{e}\n")),
        }
    }
    let Some(db) = db.as_ref() else {
        return status(503, "no database\n");
    };
    let col = &app.args.items_column;
    let result = if post {
        let param = match db.flavor() {
            Flavor::Postgres => "$1",
            Flavor::Sqlite => "?1",
        };
        db.execute(
            &format!("INSERT INTO items ({col}) VALUES ({param})"),
            &text,
        )
        .await
        .map(|_| (201, serde_json::json!({"added": text, "column": col})))
    } else {
        db.texts(&format!("SELECT {col} FROM items ORDER BY id"))
            .await
            .map(|rows| {
                (
                    200,
                    serde_json::json!({"items": rows, "column": col, "version": app.args.version}),
                )
            })
    };
    match result {
        Ok((code, body)) => Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body.to_string()))
            .expect("valid response"),
        Err(e) => status(500, &format!("{} ({col}): {e}\n", app.ident)),
    }
}

fn sse(ident: Arc<str>) -> Response<AppBody> {
    let ticks = futures_util::stream::unfold(0u64, move |n| {
        let ident = ident.clone();
        async move {
            if n > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let event = format!("id: {n}\ndata: {ident} tick {n}\n\n");
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), n + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(ticks)))
        .expect("valid response")
}

fn websocket(mut req: Request<Incoming>, ident: Arc<str>) -> Response<AppBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("expected a WebSocket upgrade\n"))
            .expect("valid response");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                let reply = format!("{ident}: {}", msg.into_text().unwrap_or_default());
                if ws.send(reply.into()).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(full(Bytes::new()))
        .expect("valid response")
}
