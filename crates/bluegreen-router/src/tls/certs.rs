//! The certificates in use: loaded and checked (chain, matching key, names,
//! expiry), picked by SNI, swapped whole when their files change or ACME
//! brings a new one. New handshakes see the new set; open connections keep
//! theirs.

use super::challenge::{Challenges, ACME_TLS_ALPN};
use crate::crypto::provider;
use arc_swap::ArcSwap;
use bluegreen_core::config::CertificatePair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What a loaded certificate says about itself (for status and messages).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    /// The file it came from (for one obtained by ACME, the state file
    /// that keeps it).
    pub file: String,
    /// DNS names it serves (`*.example.com` for wildcards).
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    #[serde(default)]
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// A certificate ready to serve, with what it says about itself.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// The certificates, by name; SNI picks one.
#[derive(Debug, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Suffix (`.example.com`) of each `*.example.com` name.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no name (or one no certificate has); none
    /// until a first certificate exists (ACME only, before its first
    /// issuance): such handshakes fail.
    default: Option<Arc<CertifiedKey>>,
    pub infos: Vec<CertInfo>,
}

impl Certificates {
    /// Loads every pair, in order. The error names the file and what is
    /// wrong with it.
    pub fn load(pairs: &[CertificatePair]) -> Result<Vec<Loaded>, String> {
        pairs.iter().map(load_pair).collect()
    }

    /// Among the files the last that names a host serves it (appending a
    /// new certificate during a rotation takes over); the ACME certificate
    /// serves only names no file holds. The first file (else the ACME
    /// certificate) is the default.
    fn build(files: &[Loaded], acme: Option<&Loaded>) -> Certificates {
        use std::collections::hash_map::Entry;
        let mut c = Certificates::default();
        let all = files
            .iter()
            .map(|l| (l, true))
            .chain(acme.map(|l| (l, false)));
        for (l, wins) in all {
            for name in &l.info.names {
                let entry = match name.strip_prefix('*') {
                    Some(suffix) => c.wildcard.entry(suffix.to_ascii_lowercase()),
                    None => c.exact.entry(name.to_ascii_lowercase()),
                };
                match entry {
                    Entry::Occupied(mut e) if wins => {
                        e.insert(l.key.clone());
                    }
                    Entry::Occupied(_) => {}
                    Entry::Vacant(e) => {
                        e.insert(l.key.clone());
                    }
                }
            }
            c.default.get_or_insert_with(|| l.key.clone());
            c.infos.push(l.info.clone());
        }
        c
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        name.find('.')
            .and_then(|dot| self.wildcard.get(&name[dot..]))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// The certificates in use: the configured files (watched) and the one
/// ACME keeps, built into one set that is swapped whole.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<Certificates>,
    /// The configured files (a reload may change the list).
    pairs: Mutex<Vec<CertificatePair>>,
    /// The files' (modified time, length) when last loaded or tried.
    seen: Mutex<Vec<Stamp>>,
    files: Mutex<Vec<Loaded>>,
    acme: Mutex<Option<Loaded>>,
    /// What ACME challenges our listeners answer right now.
    pub challenges: Arc<Challenges>,
}

type Stamp = Option<(SystemTime, u64)>;

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A CA checking a TLS-ALPN-01 challenge gets the challenge
        // certificate for that name and nothing else.
        // RFC 8737: a validation offers `acme-tls/1` and nothing else; a
        // client offering more is an ordinary client.
        let only_acme = hello.alpn().is_some_and(|protos| {
            let protos: Vec<&[u8]> = protos.collect();
            protos == [ACME_TLS_ALPN]
        });
        if only_acme {
            return self.challenges.alpn_certificate(hello.server_name()?);
        }
        self.current.load().pick(hello.server_name())
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
    /// Loads the configured files (all must load).
    pub fn new(pairs: &[CertificatePair]) -> Result<CertStore, String> {
        let files = Certificates::load(pairs)?;
        Ok(CertStore {
            current: ArcSwap::from_pointee(Certificates::build(&files, None)),
            pairs: Mutex::new(pairs.to_vec()),
            seen: Mutex::new(stamps(pairs)),
            files: Mutex::new(files),
            acme: Mutex::new(None),
            challenges: Arc::default(),
        })
    }

    /// The certificates in use, for status and metrics.
    pub fn infos(&self) -> Vec<CertInfo> {
        self.current.load().infos.clone()
    }

    /// Puts a new list of files in use (a reload), loaded beforehand with
    /// [`Certificates::load`] so that nothing changes when one is bad.
    pub fn replace_files(&self, pairs: &[CertificatePair], files: Vec<Loaded>) {
        *lock(&self.pairs) = pairs.to_vec();
        *lock(&self.seen) = stamps(pairs);
        *lock(&self.files) = files;
        self.rebuild();
    }

    /// The ACME certificate in use, if any.
    pub fn acme(&self) -> Option<Loaded> {
        lock(&self.acme).clone()
    }

    /// Puts a certificate obtained by ACME in use (beside the files, which
    /// win for names they also hold: an operator's explicit file is kept).
    pub fn set_acme(&self, cert: Loaded) {
        *lock(&self.acme) = Some(cert);
        self.rebuild();
    }

    fn rebuild(&self) {
        let files = lock(&self.files);
        let acme = lock(&self.acme);
        self.current
            .store(Arc::new(Certificates::build(&files, acme.as_ref())));
    }

    /// Loads the files again if any changed since the last look (blocking
    /// file I/O: call it off the async threads). A set that does not load
    /// whole leaves the one in use alone, and is not tried again until the
    /// files change again.
    pub fn reload_if_changed(&self) -> Reload {
        let pairs = lock(&self.pairs).clone();
        let now = stamps(&pairs);
        {
            let mut seen = lock(&self.seen);
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match Certificates::load(&pairs) {
            Ok(files) => {
                let names = files.iter().flat_map(|l| l.info.names.clone()).collect();
                *lock(&self.files) = files;
                self.rebuild();
                Reload::Loaded(names)
            }
            Err(e) => Reload::Kept(e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
/// How long one look at them may take.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// Watches the certificate files until `stop`; every change is loaded and
/// checked whole, swapped in, and announced (or kept out, with the reason).
pub fn watch(
    store: Arc<CertStore>,
    events: Arc<dyn Fn(Reload) + Send + Sync>,
    stop: CancellationToken,
) {
    if lock(&store.pairs).is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut stuck = None;
        let mut tick = tokio::time::interval(WATCH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // Off the async threads, with a deadline: a file system that
            // hangs (a dead NFS mount) is reported, not waited on, and no
            // second read starts while one is stuck.
            if stuck
                .as_ref()
                .is_some_and(|h: &tokio::task::JoinHandle<Reload>| !h.is_finished())
            {
                continue;
            }
            let s = store.clone();
            let mut read = tokio::task::spawn_blocking(move || s.reload_if_changed());
            let result = match tokio::time::timeout(READ_LIMIT, &mut read).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => continue,
                Err(_) => {
                    tracing::warn!(limit = ?READ_LIMIT, "tls: reading the certificate files takes too long; kept the certificates in use");
                    stuck = Some(read);
                    continue;
                }
            };
            stuck = None;
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

/// One chain and key file: parsed, matched, and valid now (neither expired
/// nor not yet valid, within `CLOCK_SKEW`).
fn load_pair(pair: &CertificatePair) -> Result<Loaded, String> {
    let file = pair.cert.display().to_string();
    let chain = read_capped(&pair.cert)?;
    let key_file = pair.key.display().to_string();
    let key = read_capped(&pair.key)?;
    let loaded = from_pem(&chain, &key, &file, &key_file)?;
    valid_now(&loaded.info, &file, unix_now())?;
    Ok(loaded)
}

/// Largest certificate chain or key file read (a long chain is ~10 KiB).
pub const MAX_FILE: u64 = 1 << 20;
/// How far our clock may be behind the CA's for a fresh certificate.
const CLOCK_SKEW: i64 = 300;

/// Refuses a certificate outside its validity period at `now`.
fn valid_now(info: &CertInfo, file: &str, now: i64) -> Result<(), String> {
    let at = |t: i64| {
        humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64),
        )
    };
    if info.not_after < now {
        return Err(format!(
            "{file}: the certificate expired (not after {})",
            at(info.not_after)
        ));
    }
    if info.not_before > now + CLOCK_SKEW {
        return Err(format!(
            "{file}: the certificate is not valid yet (not before {})",
            at(info.not_before)
        ));
    }
    Ok(())
}

/// Reads a certificate or key file: a regular file only (a FIFO or a
/// device would block the reader or never end), opened without blocking,
/// and at most `MAX_FILE` bytes.
fn read_capped(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.display();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{name}: not a regular file (a FIFO, socket or device cannot hold a certificate)"
        ));
    }
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{name}: {} bytes, more than the {} a certificate chain or key may have",
            meta.len(),
            MAX_FILE
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("{name}: grew past {MAX_FILE} bytes while read"));
    }
    Ok(bytes)
}

/// A chain and key in PEM: parsed, matched, naming at least one host. The
/// labels name where they came from in errors.
pub fn from_pem(chain: &[u8], key: &[u8], file: &str, key_file: &str) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{file}: not a PEM certificate chain: {}",
                bluegreen_store::pem_error(&e)
            )
        })?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{file}: holds no certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        format!(
            "{key_file}: not a PEM private key: {}",
            bluegreen_store::pem_error(&e)
        )
    })?;
    let info = describe(leaf, file)?;
    if info.names.is_empty() {
        return Err(format!(
            "{file}: the certificate names no DNS name or IP address (subjectAltName)"
        ));
    }
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("{key_file}: does not go with {file}: {e}"))?;
    Ok(Loaded {
        key: Arc::new(key),
        info,
    })
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An IP address SAN as text.
fn ip_name(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}

/// Names, issuer and validity of a leaf certificate.
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
                    // An admin API reached by address needs an IP SAN.
                    x509_parser::extensions::GeneralName::IPAddress(b) => ip_name(b),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertInfo {
        file: file.to_string(),
        names,
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
