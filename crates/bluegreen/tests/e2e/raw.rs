//! Byte-level test peers: an upstream that records every request exactly as
//! it arrived (head and decoded body), and a client that writes raw bytes.
//! What the app receives is the contract; these let tests check it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A stream a raw backend can speak HTTP/1.1 on: TCP, or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
use tokio_util::sync::CancellationToken;

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// In arrival order, names lower-cased, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body after transfer decoding.
    pub body: Vec<u8>,
    /// True when it came chunked.
    pub chunked: bool,
}

impl Arrived {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The one value of `name`; panics when there are several.
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} arrived {} times: {self:?}",
            all.len()
        );
        all.into_iter().next()
    }
}

/// An HTTP/1.1 upstream that answers `200 NAME` to everything (and its
/// health path) and keeps every request it got.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Arrived>>>,
    stop: CancellationToken,
}

impl RawBackend {
    pub async fn start(name: &str) -> RawBackend {
        Self::start_with(name, None).await
    }

    /// The same over HTTPS: every connection's TLS handshake first.
    pub async fn start_tls(name: &str, tls: tokio_rustls::TlsAcceptor) -> RawBackend {
        Self::start_with(name, Some(tls)).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen2, stop2, name2) = (seen.clone(), stop.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                let (seen, name, stop) = (seen2.clone(), name2.clone(), stop2.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let serve = async move {
                        match tls {
                            None => serve_conn(sock, seen, name).await,
                            Some(tls) => {
                                if let Ok(sock) = tls.accept(sock).await {
                                    serve_conn(sock, seen, name).await
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        RawBackend {
            addr,
            name: name.into(),
            seen,
            stop,
        }
    }

    /// Requests received other than health checks, oldest first.
    pub fn requests(&self) -> Vec<Arrived> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.target != "/healthz")
            .cloned()
            .collect()
    }

    /// Forgets what it has seen.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// Waits until `n` requests (not health checks) have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Arrived> {
        crate::support::wait_until(
            Duration::from_secs(10),
            "requests at the upstream",
            || async { self.requests().len() >= n },
        )
        .await;
        self.requests()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_conn<S: Io>(mut sock: S, seen: Arc<Mutex<Vec<Arrived>>>, name: String) {
    let mut buf = Vec::new();
    loop {
        let Some(arrived) = read_request(&mut sock, &mut buf).await else {
            return;
        };
        let head = arrived.method == "HEAD";
        let close = arrived.minor == 0
            || arrived
                .all("connection")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("close"));
        seen.lock().unwrap().push(arrived);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{}",
            name.len(),
            if head { "" } else { name.as_str() }
        );
        if sock.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request head off `sock`, leaving its body unread.
async fn read_head<S: Io>(sock: &mut S, buf: &mut Vec<u8>) -> Option<Arrived> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(sock, buf).await {
            return None;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_len]).ok()?;
    let arrived = Arrived {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        minor: req.version?,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
        body: Vec::new(),
        chunked: false,
    };
    buf.drain(..head_len);
    Some(arrived)
}

/// Reads one request off `sock` (bytes past it stay in `buf`).
pub async fn read_request<S: Io>(sock: &mut S, buf: &mut Vec<u8>) -> Option<Arrived> {
    let mut arrived = read_head(sock, buf).await?;
    let te = arrived.all("transfer-encoding");
    if te
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        arrived.chunked = true;
        arrived.body = read_chunked(sock, buf).await?;
    } else if let Some(len) = arrived.all("content-length").first() {
        let len: usize = len.trim().parse().ok()?;
        while buf.len() < len {
            if !fill(sock, buf).await {
                return None;
            }
        }
        arrived.body = buf.drain(..len).collect();
    }
    Some(arrived)
}

async fn read_chunked<S: Io>(sock: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(sock, buf).await?;
        let size_text = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(sock, buf).await?.is_empty() {}
            return Some(body);
        }
        while buf.len() < size + 2 {
            if !fill(sock, buf).await {
                return None;
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

async fn read_line<S: Io>(sock: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(line);
        }
        if !fill(sock, buf).await {
            return None;
        }
    }
}

async fn fill<S: Io>(sock: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match sock.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An upstream that answers health checks properly and every other request
/// with fixed bytes, then closes: for malformed or lying answers.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl ScriptedUpstream {
    /// Answers health checks; any other request's head is read and then
    /// nothing more, ever: an app that stopped reading its uploads.
    pub async fn never_reading() -> ScriptedUpstream {
        ScriptedUpstream::start(b"").await
    }

    /// Answers health checks; every other request gets `answer`, then the
    /// connection closes (with an empty `answer`: the connection is held
    /// open and never read again).
    pub async fn start(answer: &[u8]) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (stop2, answer) = (stop.clone(), answer.to_vec());
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(req) = read_head(&mut sock, &mut buf).await {
                        if req.target == "/healthz" {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if sock.write_all(ok).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        if answer.is_empty() {
                            // Hold the socket, read nothing: the sender's buffers fill.
                            std::future::pending::<()>().await;
                        }
                        let _ = sock.write_all(&answer).await;
                        return;
                    }
                });
            }
        });
        ScriptedUpstream { addr, stop }
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A raw HTTP/1.1 client connection: write exact bytes, read one response.
pub struct RawClient {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// A response as the client received it.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The minor version of its status line: 0 for HTTP/1.0, 1 for 1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// Reads one response (`head` says it answers a HEAD request). `None`
    /// when the connection closed first or nothing came within 10 s.
    pub async fn response(&mut self, head: bool) -> Option<RawResponse> {
        tokio::time::timeout(Duration::from_secs(10), self.read_response(head))
            .await
            .ok()
            .flatten()
    }

    async fn read_response(&mut self, head: bool) -> Option<RawResponse> {
        let head_len = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut self.sock, &mut self.buf).await {
                return None;
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&self.buf[..head_len]).ok()?;
        let status = resp.code?;
        let minor = resp.version?;
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        self.buf.drain(..head_len);
        let mut out = RawResponse {
            status,
            minor,
            headers,
            body: Vec::new(),
        };
        if head || status == 101 || status == 204 || status == 304 {
            return Some(out);
        }
        let chunked = out
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        if chunked {
            out.body = read_chunked(&mut self.sock, &mut self.buf).await?;
        } else if let Some(len) = out.header("content-length") {
            let len: usize = len.parse().ok()?;
            while self.buf.len() < len {
                if !fill(&mut self.sock, &mut self.buf).await {
                    return None;
                }
            }
            out.body = self.buf.drain(..len).collect();
        } else {
            while fill(&mut self.sock, &mut self.buf).await {}
            out.body = std::mem::take(&mut self.buf);
        }
        Some(out)
    }

    /// True when the server closed the connection (read end-of-stream)
    /// within 10 s.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.sock.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Sends `bytes` on a new connection and reads one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<RawResponse> {
    let mut c = RawClient::connect(addr).await;
    c.send(bytes).await;
    c.response(bytes.starts_with(b"HEAD ")).await
}
