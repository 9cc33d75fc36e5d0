//! `bluegreen app`: a tiny upstream for demos and trials. It answers with its
//! name and version so anyone can see which side served a request.
//!
//! Routes: `/` (text), `/healthz`, `/sse` (a server-sent event per second),
//! `/ws` (WebSocket echo). Everything else is 404.

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
    #[arg(long = "app-version", default_value = "v1")]
    pub version: String,
}

type AppBody = BoxBody<Bytes, Infallible>;

/// Entry point of `bluegreen app`.
pub fn main(args: AppArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let ident: Arc<str> = Arc::from(format!("{} {}", args.name, args.version));
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((stream, _)) = r else { continue };
                    let ident = ident.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let ident = ident.clone();
                            async move { Ok::<_, Infallible>(route(req, &ident)) }
                        });
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                    });
                }
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

fn full(s: impl Into<Bytes>) -> AppBody {
    Full::new(s.into()).boxed()
}

fn route(req: Request<Incoming>, ident: &Arc<str>) -> Response<AppBody> {
    match req.uri().path() {
        "/healthz" => Response::new(full("ok\n")),
        "/sse" => sse(ident.clone()),
        "/ws" => websocket(req, ident.clone()),
        "/" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header("x-served-by", ident.as_ref())
            .body(full(format!("{ident}\n")))
            .expect("valid response"),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found\n"))
            .expect("valid response"),
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
