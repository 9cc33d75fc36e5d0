//! ACME end to end against Pebble (Let's Encrypt's test CA, a real ACME
//! server): the certificate is issued through a challenge our own listener
//! answers, renewed before it ends, kept in use while the CA is down, and
//! renewed again once it is back (with a new account: a restarted Pebble
//! forgets every account). Pebble resolves names with pebble-challtestsrv,
//! which answers every name with 127.0.0.1.

use crate::raw::RawBackend;
use crate::support::*;
use crate::tls::Pki;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NAME: &str = "shop.example.test";

/// A free port on loopback (bound, then released).
fn free_port() -> u16 {
    closed_port().port()
}

/// Pebble and its DNS, on ports of their own, checking challenges on the
/// router's `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01).
struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    config: PathBuf,
    dns_port: u16,
    api: u16,
    mgmt: u16,
    /// The CA bundle for Pebble's own HTTPS (our test CA).
    ca: String,
}

impl Pebble {
    fn start(pki: &Pki, http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        let (cert, key) = pki.issue("pebble", &["localhost", "127.0.0.1"], false);
        let (api, mgmt, dns_port, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = pki.path("pebble.json");
        let json = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(&config, json.to_string()).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv is installed (scripts/test installs pebble)");
        let mut p = Pebble {
            pebble: None,
            dns,
            config,
            dns_port,
            api,
            mgmt,
            ca: pki.ca_file(),
        };
        p.run();
        p
    }

    /// Starts (or restarts) Pebble itself; a restarted Pebble has a new
    /// root and no accounts.
    fn run(&mut self) {
        let child = Command::new("pebble")
            .args(["-config", self.config.to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble is installed (scripts/test installs it)");
        self.pebble = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api)
    }

    async fn wait_ready(&self) {
        let url = self.directory();
        wait_until(Duration::from_secs(20), "pebble answers", || {
            let (code, _) = curl(&["--cacert", &self.ca, "-f", &url]);
            async move { code == 0 }
        })
        .await;
    }

    /// Pebble's current root, to check what it issued as a client would.
    fn root(&self, dir: &std::path::Path) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.mgmt);
        let (code, pem) = curl(&["--cacert", &self.ca, "-f", &url]);
        assert_eq!(code, 0, "pebble root: {pem}");
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!("pebble-root-{n}.pem"));
        std::fs::write(&file, pem).unwrap();
        file.display().to_string()
    }

    fn acme_toml(&self, challenge: &str) -> String {
        format!(
            "[tls.acme]\ndomains = [\"{NAME}\"]\ncontact = \"mailto:ops@example.test\"\n\
             directory = \"{}\"\nca_bundle = \"{}\"\nchallenge = \"{challenge}\"\nretry_after = \"1s\"\n",
            self.directory(),
            self.ca
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// The ACME certificate status shows: (issuer, not_after).
async fn acme_cert(router: &RouterProc) -> Option<(String, i64)> {
    let status = router.status().await;
    status["certificates"].as_array()?.iter().find_map(|c| {
        let issuer = c["issuer"].as_str()?;
        issuer
            .contains("Pebble")
            .then(|| (issuer.to_string(), c["not_after"].as_i64().unwrap_or(0)))
    })
}

async fn wait_for_cert(
    router: &RouterProc,
    what: &str,
    pred: impl Fn(&(String, i64)) -> bool,
) -> (String, i64) {
    let mut found = None;
    for _ in 0..600 {
        if let Some(c) = acme_cert(router).await.filter(|c| pred(c)) {
            found = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match found {
        Some(c) => c,
        None => panic!(
            "{what}: status {}\n{}",
            router.status().await,
            router.stderr()
        ),
    }
}

/// curl to NAME on the HTTPS port, checking the chain against `root`.
fn curl_verified(root: &str, port: u16, path: &str) -> (i32, String) {
    let resolve = format!("{NAME}:{port}:127.0.0.1");
    let url = format!("https://{NAME}:{port}{path}");
    curl(&["--cacert", root, "--resolve", &resolve, &url])
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issues_renews_and_survives_the_ca_going_away() {
    let pki = Pki::new();
    let tls_port = free_port();
    // Certificates live 12 s: renewal is due 8 s after each issuance.
    let mut pebble = Pebble::start(&pki, free_port(), tls_port, 12);
    pebble.wait_ready().await;
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let router = RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
        .extra(&format!(
            "\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\n{}",
            pebble.acme_toml("tls-alpn-01")
        ))
        .start();
    router.wait_until_live_healthy().await;

    // 1. Issued: a client that trusts only Pebble's root reaches the app.
    let first = wait_for_cert(&router, "first issuance", |_| true).await;
    let root = pebble.root(pki.path("").as_path());
    let (code, out) = curl_verified(&root, tls_port, "/cart?step=2");
    assert_eq!((code, out.as_str()), (0, "blue"), "{out}");
    let got = blue.wait_for(1).await;
    assert_eq!(got[0].target, "/cart?step=2");
    assert_eq!(got[0].one("x-forwarded-proto").as_deref(), Some("https"));
    // Kept in the state dir, readable by us alone.
    let file = router.state_dir.join("acme.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(stored["account"].is_object(), "{stored}");
    assert_eq!(stored["certificate"]["domains"][0], NAME);

    // 2. Renewed before it ends, by itself.
    let second = wait_for_cert(&router, "renewal", |c| c.1 > first.1).await;
    let (code, out) = curl_verified(&root, tls_port, "/after-renewal");
    assert_eq!((code, out.as_str()), (0, "blue"), "{out}");

    // 3. The CA goes away: the attempt fails, is retried, and the
    //    certificate in use stays in use.
    pebble.stop();
    let mut failed = serde_json::Value::Null;
    for _ in 0..300 {
        let s = router.status().await;
        if s["acme"]["failures"].as_u64().unwrap_or(0) >= 2 {
            failed = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failed["acme"]["last_error"].as_str().is_some(),
        "no failure seen: {failed}\n{}",
        router.stderr()
    );
    assert_eq!(acme_cert(&router).await, Some(second.clone()));
    let resolve = format!("{NAME}:{tls_port}:127.0.0.1");
    let (code, out) = curl(&[
        "-k",
        "--resolve",
        &resolve,
        &format!("https://{NAME}:{tls_port}/ca-down"),
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "blue"),
        "still served while the CA is down"
    );
    assert!(
        router.stderr().contains("the certificate in use stays"),
        "{}",
        router.stderr()
    );

    // 4. The CA is back (a fresh one, which forgot our account): the next
    //    try registers again and renews.
    pebble.run();
    pebble.wait_ready().await;
    let third = wait_for_cert(&router, "renewal after the CA came back", |c| {
        c.1 > second.1
    })
    .await;
    assert!(third.1 > second.1);
    let root = pebble.root(pki.path("").as_path());
    let (code, out) = curl_verified(&root, tls_port, "/ca-back");
    assert_eq!((code, out.as_str()), (0, "blue"), "{out}");
    assert_eq!(router.status().await["acme"]["failures"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_is_answered_on_the_plain_listener_and_the_certificate_outlives_a_restart() {
    let pki = Pki::new();
    let (http_port, tls_port) = (free_port(), free_port());
    let mut pebble = Pebble::start(&pki, http_port, tls_port, 3600);
    pebble.wait_ready().await;
    let blue = RawBackend::start("blue").await;
    let green = RawBackend::start("green").await;
    let state = tempfile::tempdir().unwrap();
    let toml = format!(
        "\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\nredirect_http = true\n{}",
        pebble.acme_toml("http-01")
    );
    let builder = || {
        RouterBuilder::addrs(vec![blue.addr], vec![green.addr])
            .listen(([127, 0, 0, 1], http_port).into())
            .state_dir(state.path())
            .extra(&toml)
    };
    let router = builder().start();
    router.wait_until_live_healthy().await;
    let issued = wait_for_cert(&router, "issuance over http-01", |_| true).await;
    let root = pebble.root(pki.path("").as_path());
    let (code, out) = curl_verified(&root, tls_port, "/over-https");
    assert_eq!((code, out.as_str()), (0, "blue"), "{out}");

    // Plain HTTP is redirected, except the challenge path, which an app
    // may answer itself when the token is not ours.
    let plain = format!("http://127.0.0.1:{http_port}");
    let (_, code) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{plain}/x"),
    ]);
    assert_eq!(code, "308");
    let (code, out) = curl(&[&format!("{plain}/.well-known/acme-challenge/the-apps-own")]);
    assert_eq!((code, out.as_str()), (0, "blue"));
    let got = blue.wait_for(2).await;
    assert_eq!(got[1].target, "/.well-known/acme-challenge/the-apps-own");

    // Restarted with the CA gone: the stored certificate is served at once.
    drop(router);
    pebble.stop();
    let router = builder().start();
    let (code, out) = curl_verified(&root, tls_port, "/after-restart");
    assert_eq!(
        (code, out.as_str()),
        (0, "blue"),
        "{out}\n{}",
        router.stderr()
    );
    assert_eq!(acme_cert(&router).await, Some(issued));
}
