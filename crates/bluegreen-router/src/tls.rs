//! TLS termination: certificates loaded and checked (chain, matching key,
//! names, expiry), SNI picking one, and HTTPS connections served by hyper
//! (HTTP/2 by ALPN, HTTP/1.1 with upgrades) into the same request path as
//! plain HTTP. rustls with the `ring` provider: pure Rust plus a C compiler
//! that is there anyway (no cmake or Go, unlike aws-lc-rs), and it is what
//! rustls tests most.

use crate::downstream::{Counted, Held, Protocols};
use crate::request::{self, ConnCtx};
use arc_swap::ArcSwap;
use bluegreen_core::config::{CertificatePair, TlsConfig, TlsVersion};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What a loaded certificate says about itself (for status and messages).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub file: String,
    /// DNS names it serves (`*.example.com` for wildcards).
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The certificates, by name; SNI picks one.
#[derive(Debug)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Suffix (`.example.com`) of each `*.example.com` name.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no name (or one no certificate has).
    default: Arc<CertifiedKey>,
    pub infos: Vec<CertInfo>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Certificates {
    /// Loads every pair; the first is the default. The error names the file
    /// and what is wrong with it.
    pub fn load(pairs: &[CertificatePair]) -> Result<Certificates, String> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut infos = Vec::new();
        let mut default = None;
        for pair in pairs {
            let (key, info) = load_pair(pair)?;
            for name in &info.names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.insert(suffix.to_ascii_lowercase(), key.clone()),
                    None => exact.insert(name.to_ascii_lowercase(), key.clone()),
                };
            }
            default.get_or_insert_with(|| key.clone());
            infos.push(info);
        }
        let default = default.ok_or("no certificate configured")?;
        Ok(Certificates {
            exact,
            wildcard,
            default,
            infos,
        })
    }

    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.find('.')
            .and_then(|dot| self.wildcard.get(&name[dot..]))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// The certificates in use, swapped whole when their files change: new
/// handshakes see the new ones, open connections keep theirs.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<Certificates>,
    pairs: Vec<CertificatePair>,
    /// The files' (modified time, length) when last loaded or tried.
    seen: Mutex<Vec<Stamp>>,
}

type Stamp = Option<(SystemTime, u64)>;

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()))
    }
}

/// What a look at the certificate files found.
#[derive(Debug, PartialEq)]
pub enum Reload {
    /// Nothing changed since the last look.
    Unchanged,
    /// New certificates are in use.
    Loaded(Vec<String>),
    /// The files changed but do not load; the previous ones stay.
    Kept(String),
}

impl CertStore {
    fn new(pairs: &[CertificatePair]) -> Result<CertStore, String> {
        let certs = Certificates::load(pairs)?;
        Ok(CertStore {
            current: ArcSwap::from_pointee(certs),
            pairs: pairs.to_vec(),
            seen: Mutex::new(stamps(pairs)),
        })
    }

    /// The certificates in use, for status and metrics.
    pub fn infos(&self) -> Vec<CertInfo> {
        self.current.load().infos.clone()
    }

    /// Loads the files again if any changed since the last look (blocking
    /// file I/O: call it off the async threads). A set that does not load
    /// whole leaves the one in use alone, and is not tried again until the
    /// files change again.
    pub fn reload_if_changed(&self) -> Reload {
        let now = stamps(&self.pairs);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match Certificates::load(&self.pairs) {
            Ok(certs) => {
                let names = certs.infos.iter().flat_map(|i| i.names.clone()).collect();
                self.current.store(Arc::new(certs));
                Reload::Loaded(names)
            }
            Err(e) => Reload::Kept(e),
        }
    }
}

fn stamps(pairs: &[CertificatePair]) -> Vec<Stamp> {
    pairs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// How often certificate files are looked at.
const WATCH: Duration = Duration::from_secs(1);

/// Watches the certificate files until `stop`; every change is loaded and
/// checked whole, swapped in, and announced (or kept out, with the reason).
pub fn watch(
    store: Arc<CertStore>,
    events: Arc<dyn Fn(Reload) + Send + Sync>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let s = store.clone();
            let Ok(result) = tokio::task::spawn_blocking(move || s.reload_if_changed()).await
            else {
                continue;
            };
            match &result {
                Reload::Unchanged => continue,
                Reload::Loaded(names) => {
                    tracing::info!(names = ?names, "tls: certificates reloaded")
                }
                Reload::Kept(why) => tracing::warn!(
                    reason = %why,
                    "tls: the certificate files changed but do not load; kept the previous certificates"
                ),
            }
            events(result);
        }
    });
}

/// One chain and key: parsed, matched, and still valid now.
fn load_pair(pair: &CertificatePair) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let file = pair.cert.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| format!("{file}: cannot read certificates: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{file}: not a PEM certificate chain: {e}"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{file}: holds no certificate"))?;
    let key_file = pair.key.display().to_string();
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| format!("{key_file}: not a PEM private key: {e}"))?;
    let info = describe(leaf, &file)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if info.not_after < now {
        return Err(format!(
            "{file}: the certificate expired (not after {})",
            info.not_after
        ));
    }
    if info.names.is_empty() {
        return Err(format!(
            "{file}: the certificate names no DNS name (subjectAltName)"
        ));
    }
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("{key_file}: does not go with {file}: {e}"))?;
    Ok((Arc::new(certified), info))
}

/// Names, issuer and expiry of a leaf certificate.
fn describe(leaf: &CertificateDer<'_>, file: &str) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{file}: not an X.509 certificate: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertInfo {
        file: file.to_string(),
        names,
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The server side of TLS: versions, ALPN (`h2`, `http/1.1`), SNI.
pub fn acceptor(config: &TlsConfig) -> Result<(TlsAcceptor, Arc<CertStore>), String> {
    let certs = Arc::new(CertStore::new(&config.certificates)?);
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(server)), certs))
}

/// How long a client may take to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Open responses on one HTTPS connection and when the last one ended: an
/// idle connection (HTTP/2 included, whose pings keep it alive otherwise) is
/// closed after `idle_timeout`, as on the plain listeners.
struct Activity {
    open: AtomicUsize,
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        (self.open.load(Ordering::Relaxed) == 0).then(|| {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            self.base.elapsed().saturating_sub(last)
        })
    }
}

/// One open response; its end is the connection's last activity.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.open.fetch_add(1, Ordering::Relaxed);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one HTTPS connection: the handshake, then HTTP/2 (by ALPN) or
/// HTTP/1.1 with upgrades, until the client is done, it idles for
/// `idle_timeout`, or `drain` asks the connection to finish what it has
/// and close.
pub async fn serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    ctx: Arc<ConnCtx>,
    protocols: Arc<Protocols>,
    drain: CancellationToken,
) {
    let gauge = ctx.router.clients[ctx.kind as usize].clone();
    let _open = Held::new(&gauge.open);
    let tls = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(listener = ctx.kind.as_str(), error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        _ = drain.cancelled() => return,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let activity = Arc::new(Activity {
        open: AtomicUsize::new(0),
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let svc = {
        let activity = activity.clone();
        service_fn(move |req| {
            let ctx = ctx.clone();
            let busy = Busy::new(&activity);
            async move {
                let resp = request::handle(req, &ctx).await;
                Ok::<_, Infallible>(resp.map(|b| Counted::new(b, busy)))
            }
        })
    };
    let idle = idle_out(activity, protocols.idle_timeout);
    if h2 {
        let conn = protocols.http2.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { tokio::select! { _ = drain.cancelled() => {}, _ = idle => {} } } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let conn = protocols.http1.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { tokio::select! { _ = drain.cancelled() => {}, _ = idle => {} } } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// Resolves once the connection has had no open response for `limit`.
async fn idle_out(activity: Arc<Activity>, limit: Duration) {
    loop {
        let wait = match activity.idle_for() {
            Some(idle) if idle >= limit => return,
            Some(idle) => limit - idle,
            None => limit,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}
