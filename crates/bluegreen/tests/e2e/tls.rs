//! TLS at the edge: real certificates (made here with rcgen), real clients
//! (curl over HTTP/1.1 and HTTP/2 with SNI), and what the app receives.

use crate::raw::RawBackend;
use crate::support::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// A test CA and the certificates it signs, as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = dn("bluegreen test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        let ca = rcgen::Issuer::new(params, ca_key);
        Pki { dir, ca }
    }

    pub fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// A certificate for `names` as `stem.pem` and `stem.key`.
    pub fn issue(&self, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = dn(names[0]);
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for `name` that becomes valid only next year.
    pub fn issue_future(&self, stem: &str, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = dn(name);
        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Makes a FIFO at `path` (nothing will ever write to it).
fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

fn dn(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn
}

fn tls_toml(pairs: &[(PathBuf, PathBuf)], extra: &str) -> String {
    let certs: Vec<String> = pairs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
            )
        })
        .collect();
    format!(
        "\n[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{}]\n{extra}\n",
        certs.join(", ")
    )
}

/// curl against `name` resolved to the router's HTTPS port; (exit code, output).
fn curl_https(pki: &Pki, port: u16, name: &str, path: &str, args: &[&str]) -> (i32, String) {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    let ca = pki.ca_file();
    let mut all = vec!["--cacert", ca.as_str(), "--resolve", resolve.as_str()];
    all.extend_from_slice(args);
    all.push(&url);
    curl(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_sni_reaches_the_app_over_http1_and_http2() {
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.test"], false);
    let api = pki.issue("api", &["*.api.test"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&tls_toml(
            &[shop, api],
            "hsts = \"max-age=31536000\"\nredirect_http = true",
        ))
        .start();
    router.wait_until_live_healthy().await;
    let port = router.https.expect("an https listener").port();

    // HTTP/1.1 and HTTP/2 by ALPN; each name gets its own certificate
    // (curl checks the name against the CA-signed certificate it is served).
    let (code, out) = curl_https(
        &pki,
        port,
        "shop.test",
        "/a/b?x=1",
        &["--http1.1", "-i", "-w", "%{http_version}"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{out}"
    );
    assert!(out.ends_with("blue1.1"), "{out}");
    let (code, out) = curl_https(
        &pki,
        port,
        "v1.api.test",
        "/h2",
        &["--http2", "-w", " %{http_version}"],
    );
    assert_eq!((code, out.as_str()), (0, "blue 2"), "{out}");
    let got = blue.wait_for(2).await;
    assert_eq!(got[0].target, "/a/b?x=1");
    assert_eq!(got[0].one("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(got[0].one("host"), Some(format!("shop.test:{port}")));
    assert_eq!(got[1].one("x-forwarded-proto").as_deref(), Some("https"));

    // No name at all: the first certificate.
    let (code, out) = curl(&[
        "-k",
        "--http1.1",
        "-w",
        " %{http_version}",
        &format!("https://127.0.0.1:{port}/"),
    ]);
    assert_eq!((code, out.as_str()), (0, "blue 1.1"), "{out}");

    // The plain listener sends everyone to HTTPS, keeping path and query.
    let (code, out) = curl(&["-i", &router.url("/c?d=1")]);
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let want = format!("location: https://127.0.0.1:{port}/c?d=1");
    assert!(out.to_ascii_lowercase().contains(&want), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_clients_fail_and_everyone_else_is_served() {
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.test"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&tls_toml(&[shop], ""))
        .start();
    router.wait_until_live_healthy().await;
    let port = router.https.unwrap().port();
    // A name no certificate has: the default one, which the client refuses.
    let (code, _) = curl_https(&pki, port, "other.test", "/", &[]);
    assert_eq!(code, 60, "peer certificate not accepted");
    // TLS 1.0 is never spoken.
    let (code, _) = curl_https(
        &pki,
        port,
        "shop.test",
        "/",
        &["--tlsv1.0", "--tls-max", "1.0"],
    );
    assert_ne!(code, 0);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = crate::raw::exchange(
        ([127, 0, 0, 1], port).into(),
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(plain.as_ref().is_none_or(|r| r.status != 200), "{plain:?}");
    // And everyone else is served as before.
    let (code, out) = curl_https(&pki, port, "shop.test", "/ok", &[]);
    assert_eq!((code, out.as_str()), (0, "blue"));
    // A client that does not trust our CA ends the handshake with an alert.
    let resolve = format!("shop.test:{port}:127.0.0.1");
    let url = format!("https://shop.test:{port}/");
    let (code, _) = curl(&["--resolve", &resolve, &url]);
    assert_eq!(code, 60, "peer certificate not accepted");
    // A record of application data before any handshake, and a TLS 1.2
    // warning alert: rustls logged both at WARN, one line per connection.
    for bytes in [
        &b"\x17\x03\x03\x00\x05hello"[..],
        b"\x15\x03\x03\x00\x02\x01\x00",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(bytes).await.unwrap();
        c.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink).await;
    }
    // Each failed handshake is counted by reason, and none is a warning.
    let count = |metrics: &str, reason: &str| -> u64 {
        let name = format!("bluegreen_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let metrics = || async {
        let (_, m) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
        m.as_str().unwrap_or_default().to_string()
    };
    wait_until(
        std::time::Duration::from_secs(10),
        "every failure counted",
        || async {
            let m = metrics().await;
            count(&m, "not_tls") >= 2
                && count(&m, "incompatible") >= 1
                && count(&m, "client_alert") >= 1
                && count(&m, "closed") >= 1
        },
    )
    .await;
    let metrics = metrics().await;
    assert_eq!(count(&metrics, "timeout"), 0, "{metrics}");
    let warnings: Vec<String> = router
        .stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

fn check(config: &Path) -> (i32, String) {
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_the_certificate_file_and_what_is_wrong() {
    let pki = Pki::new();
    let (shop, shop_key) = pki.issue("shop", &["shop.test"], false);
    let (_, other_key) = pki.issue("other", &["other.test"], false);
    let expired = pki.issue("old", &["old.test"], true);
    // Cut short: its END line is gone.
    let cut = pki.path("cut.pem");
    let text = std::fs::read_to_string(&shop).unwrap();
    std::fs::write(&cut, text.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let base = "[proxy]\nlisten = \"127.0.0.1:0\"\n[environments.blue]\nupstreams = [\"127.0.0.1:9\"]\n[environments.green]\nupstreams = [\"127.0.0.1:8\"]\n";
    let cases = [
        (vec![(shop.clone(), other_key)], "does not go with"),
        (vec![expired], "expired"),
        (
            vec![(pki.path("missing.pem"), shop_key.clone())],
            "cannot read",
        ),
        (
            vec![(shop_key.clone(), shop_key.clone())],
            "holds no certificate",
        ),
        (
            vec![pki.issue_future("later", "later.test")],
            "not valid yet",
        ),
        (
            vec![(pki.path("fifo.pem"), shop_key.clone())],
            "fifo.pem is not a file",
        ),
        (
            vec![(pki.path("huge.pem"), shop_key.clone())],
            "more than the",
        ),
        (
            vec![(cut, shop_key)],
            r#"cut.pem: not a PEM certificate chain: missing "-----END CERTIFICATE-----""#,
        ),
    ];
    mkfifo(&pki.path("fifo.pem"));
    std::fs::write(pki.path("huge.pem"), vec![b'A'; 2 << 20]).unwrap();
    for (pairs, want) in cases {
        let file = pki.path("bluegreen.toml");
        std::fs::write(&file, format!("{base}{}", tls_toml(&pairs, ""))).unwrap();
        let (code, err) = check(&file);
        assert_eq!(code, 2, "{want}: {err}");
        assert!(
            err.contains(want) && err.contains("tls.certificates"),
            "{want}: {err}"
        );
    }
}

/// Replaces `dest` by `src`'s contents through a rename, as a deploy tool would.
fn replace(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_certificate_files_are_swapped_in_and_bad_ones_kept_out() {
    let old_ca = Pki::new();
    let new_ca = Pki::new();
    let (cert, key) = old_ca.issue("live", &["shop.test"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&tls_toml(&[(cert.clone(), key.clone())], ""))
        .start();
    router.wait_until_live_healthy().await;
    let port = router.https.unwrap().port();
    assert_eq!(curl_https(&old_ca, port, "shop.test", "/", &[]).0, 0);
    let status = router.status().await;
    assert_eq!(
        status["certificates"][0]["names"][0], "shop.test",
        "{status}"
    );

    // A new certificate from another CA: new handshakes see it.
    let (new_cert, new_key) = new_ca.issue("next", &["shop.test"], false);
    replace(&new_key, &key);
    replace(&new_cert, &cert);
    wait_until(
        std::time::Duration::from_secs(10),
        "the new certificate served",
        || async { curl_https(&new_ca, port, "shop.test", "/", &[]).0 == 0 },
    )
    .await;
    assert_ne!(
        curl_https(&old_ca, port, "shop.test", "/", &[]).0,
        0,
        "the old one is gone"
    );

    // A broken file is kept out: the certificate in use stays, and says why.
    std::fs::write(&cert, "not a certificate").unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "the bad file reported",
        || async { router.stderr().contains("kept the previous certificates") },
    )
    .await;
    assert!(
        router.stderr().contains(&cert.display().to_string()),
        "names the file"
    );
    assert_eq!(
        curl_https(&new_ca, port, "shop.test", "/", &[]).0,
        0,
        "still served"
    );
    let (code, metrics) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("bluegreen_tls_certificate_expiry_seconds{"),
        "{metrics}"
    );
}

/// A certificate path that becomes a FIFO, then a not-yet-valid
/// certificate, is reported and kept out, never blocking the watcher: a
/// valid certificate written afterwards is served, and SIGTERM still ends
/// the process at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_or_a_future_certificate_is_kept_out_and_the_watcher_goes_on() {
    let old_ca = Pki::new();
    let new_ca = Pki::new();
    let (cert, key) = old_ca.issue("live", &["shop.test"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let mut router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&tls_toml(&[(cert.clone(), key.clone())], ""))
        .start();
    router.wait_until_live_healthy().await;
    let port = router.https.unwrap().port();
    assert_eq!(curl_https(&old_ca, port, "shop.test", "/", &[]).0, 0);
    mkfifo(&cert);
    wait_until(
        std::time::Duration::from_secs(10),
        "the FIFO reported",
        || async { router.stderr().contains("not a regular file") },
    )
    .await;
    let (future, future_key) = new_ca.issue_future("future", "shop.test");
    replace(&future_key, &key);
    replace(&future, &cert);
    wait_until(
        std::time::Duration::from_secs(10),
        "the future certificate reported",
        || async { router.stderr().contains("not valid yet") },
    )
    .await;
    assert_eq!(
        curl_https(&old_ca, port, "shop.test", "/", &[]).0,
        0,
        "the one in use stays"
    );
    let (new_cert, new_key) = new_ca.issue("next", &["shop.test"], false);
    replace(&new_key, &key);
    replace(&new_cert, &cert);
    wait_until(
        std::time::Duration::from_secs(10),
        "the new certificate served",
        || async { curl_https(&new_ca, port, "shop.test", "/", &[]).0 == 0 },
    )
    .await;
    // A FIFO again, then SIGTERM: the process ends within its drain.
    mkfifo(&cert);
    router.signal("TERM");
    let status = router.wait_exit(std::time::Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {}", router.stderr());
}

/// A TLS client connection to the router's HTTPS port, trusting `pki`'s CA,
/// with `alpn` offered.
async fn tls_connect(
    pki: &Pki,
    port: u16,
    name: &'static str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let server = rustls::pki_types::ServerName::try_from(name).unwrap();
    connector.connect(server, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_tls_lives_through_a_switch_and_sse_over_tls_is_not_buffered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.test"], false);
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .extra(&tls_toml(&[shop], ""))
        .start();
    router.wait_all_healthy().await;
    let port = router.https.unwrap().port();

    let tls = tls_connect(&pki, port, "shop.test", &[b"http/1.1"]).await;
    let url = format!("wss://shop.test:{port}/ws");
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(echo(&mut ws, "hello").await, "blue:hello");
    router.switch_to("green").await;
    assert_eq!(
        echo(&mut ws, "still").await,
        "blue:still",
        "the old side keeps its socket"
    );

    // SSE: the first event arrives while the second is still held upstream.
    let mut tls = tls_connect(&pki, port, "shop.test", &[b"http/1.1"]).await;
    tls.write_all(b"GET /sse HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("green first") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("the first event before the second is released")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&got).contains("second"));
    green.release(1);
    while !String::from_utf8_lossy(&got).contains("green second") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
}

async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &'static str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    m.into_text().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_https_connections_close_after_idle_timeout_http2_too() {
    use http_body_util::{BodyExt, Empty};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.test"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .proxy("idle_timeout = \"1s\"")
        .extra(&tls_toml(&[shop], ""))
        .start();
    router.wait_until_live_healthy().await;
    let port = router.https.unwrap().port();

    // HTTP/2 (a real client, which answers the server's pings): one request,
    // then nothing; the server ends the connection after idle_timeout.
    let tls = tls_connect(&pki, port, "shop.test", &[b"h2"]).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("https://shop.test/idle")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("HTTP/2 connection closed within 10 s")
        .unwrap()
        .ok();
    assert!(
        idle_from.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle_from.elapsed()
    );

    // HTTP/1.1: connected, then silent.
    let mut tls = tls_connect(&pki, port, "shop.test", &[b"http/1.1"]).await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("HTTP/1.1 connection closed within 10 s");
    assert!(!matches!(n, Ok(n) if n > 0), "nothing but the close");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// A TLS server config for an upstream that serves `cert`.
fn upstream_acceptor((cert, key): &(PathBuf, PathBuf)) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_get_the_request_as_sent_and_an_untrusted_one_is_unhealthy() {
    let pki = Pki::new();
    let app = pki.issue("app", &["app.internal"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start_tls("green", upstream_acceptor(&app)).await;
    let green_tls = format!(
        "\n[environments.green.tls]\nserver_name = \"app.internal\"\nca = \"{}\"\n",
        pki.ca_file()
    );
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&green_tls)
        .start();
    router.wait_all_healthy().await;
    router.switch_to("green").await;

    // What arrives over TLS is what the client sent: method, target, body,
    // headers, and the client's Host.
    let url = router.url("/orders/7?x=1&y=%2F");
    let (code, out) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "qty=2&note=a%20b",
        "-H",
        "X-Custom: yes",
        &url,
    ]);
    assert_eq!((code, out.as_str()), (0, "green"), "{out}");
    let got = green.wait_for(1).await;
    assert_eq!(got[0].method, "PUT");
    assert_eq!(got[0].target, "/orders/7?x=1&y=%2F");
    assert_eq!(got[0].body, b"qty=2&note=a%20b");
    assert_eq!(got[0].one("x-custom").as_deref(), Some("yes"));
    assert_eq!(got[0].one("host"), Some(router.proxy.to_string()));
    assert_eq!(got[0].one("x-forwarded-proto").as_deref(), Some("http"));

    // An upstream whose certificate the configured CA did not sign is
    // unhealthy (it never gets traffic), and says why.
    let other = Pki::new();
    let untrusted = format!(
        "\n[environments.green.tls]\nserver_name = \"app.internal\"\nca = \"{}\"\n",
        other.ca_file()
    );
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&untrusted)
        .start();
    router.wait_until_live_healthy().await;
    wait_until(
        std::time::Duration::from_secs(10),
        "green unhealthy",
        || async {
            router.status().await["sides"]["green"]["upstreams"][0]["health"] == "unhealthy"
        },
    )
    .await;
    let why = router.status().await["sides"]["green"]["upstreams"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("TLS handshake failed"), "{why}");
    let (status, body) = router
        .api(
            "POST",
            "/api/v1/switch",
            Some("{\"to\":\"green\"}"),
            Some(TOKEN),
        )
        .await;
    assert_ne!(status, 200, "a switch to an untrusted side: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_speaks_https_and_the_cli_checks_its_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("admin", &["localhost"], false);
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .admin(&format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ))
        .start();
    let base = format!("https://localhost:{}", router.admin.port());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("BLUEGREEN_ADMIN", &base)
            .env("BLUEGREEN_TOKEN", TOKEN)
            .env_remove("BLUEGREEN_ADMIN_CA")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The CLI over HTTPS, trusting the admin certificate's CA.
    let ca = pki.ca_file();
    let mut status = (0, String::new(), String::new());
    for _ in 0..100 {
        status = run(&["status", "--json", "--admin-ca", &ca]);
        if status.0 == 0 && status.1.contains("\"healthy\": 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status.0, 0, "{status:?}");
    let (code, out, err) = run(&["switch", "--to", "green", "--admin-ca", &ca]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out) = curl(&[&router.url("/")]);
    assert_eq!((code, out.as_str()), (0, "green"));
    // Without the CA the certificate is not trusted, and nothing happens.
    let (code, _, err) = run(&["switch", "--to", "blue"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("certificate"), "{err}");
    // Plain HTTP to the admin port gets nothing.
    let (code, _) = curl(&[&format!(
        "http://127.0.0.1:{}/api/v1/status",
        router.admin.port()
    )]);
    assert_ne!(code, 0);
    let (code, out) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &format!("authorization: Bearer {TOKEN}"),
        &format!("{base}/api/v1/status"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"live\":\"green\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_client_resumes_its_session() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.test"], false);
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = RouterBuilder::new(&[&blue], &[&green])
        .extra(&tls_toml(&[shop], ""))
        .start();
    router.wait_all_healthy().await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    // One client config: its session store keeps the tickets it is given.
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut kinds = Vec::new();
    for path in ["/first", "/second"] {
        let tcp = tokio::net::TcpStream::connect(router.https.unwrap())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        let _ = tls.read_to_end(&mut resp).await;
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        vec![
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

/// Idle TLS keep-alive connections count as idle, not busy, in
/// `bluegreen_client_connections` (they never park, so they were all busy).
#[tokio::test(flavor = "multi_thread")]
async fn idle_tls_keep_alive_connections_count_as_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.test"], false);
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&tls_toml(&[shop], ""))
        .start();
    router.wait_until_live_healthy().await;
    let port = router.https.unwrap().port();
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut tls = tls_connect(&pki, port, "shop.test", &[b"http/1.1"]).await;
        tls.write_all(b"GET /x HTTP/1.1\r\nhost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"blue") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        conns.push(tls);
    }
    let gauge = |state: &'static str| {
        let router = &router;
        async move {
            let (_, m) = router.api("GET", "/metrics", None, Some(TOKEN)).await;
            m.as_str()
                .unwrap_or_default()
                .lines()
                .find(|l| {
                    l.starts_with("bluegreen_client_connections{")
                        && l.contains("listener=\"live\"")
                        && l.contains(&format!("state=\"{state}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(-1.0)
        }
    };
    wait_until(
        std::time::Duration::from_secs(10),
        "5 idle TLS connections counted idle",
        || async { gauge("idle").await >= 5.0 && gauge("busy").await == 0.0 },
    )
    .await;
    drop(conns);
}
