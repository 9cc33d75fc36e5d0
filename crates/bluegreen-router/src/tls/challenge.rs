//! ACME challenges answered by our own listeners while an order is open:
//! HTTP-01 on the plain listener (`/.well-known/acme-challenge/TOKEN`) and
//! TLS-ALPN-01 on the HTTPS listener (a self-signed certificate carrying
//! the key authorization's digest, served only to `acme-tls/1` clients).

use crate::crypto::provider;
use http::{Method, Request};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The ALPN protocol of a TLS-ALPN-01 check (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where HTTP-01 answers live.
pub const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

/// A CA's HTTP-01 request: GET or HEAD of one base64url token under
/// [`HTTP_PREFIX`]. Only these pass a `redirect_http` listener in clear
/// (to us, or to an app answering its own challenges); any other path,
/// `..` included, is redirected.
pub fn is_challenge<B>(req: &Request<B>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.uri().path().strip_prefix(HTTP_PREFIX).is_some_and(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The challenges open right now (a few at most, for one order at a time).
#[derive(Debug, Default)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: host name → challenge certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization that answers a CA's HTTP-01 request (a `200`
    /// with it as the body), when it asks for a token we hold; any other
    /// request (an app's own challenge path included) is not ours.
    pub fn answer<B>(&self, req: &Request<B>) -> Option<String> {
        if !is_challenge(req) {
            return None;
        }
        let token = req.uri().path().strip_prefix(HTTP_PREFIX)?;
        lock(&self.http).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, while its challenge is open.
    pub fn alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        lock(&self.alpn).get(&name).cloned()
    }

    pub(super) fn open_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_string(), key_authorization.to_string());
    }

    /// Opens a TLS-ALPN-01 challenge for `name` with the SHA-256 digest of
    /// its key authorization.
    pub(super) fn open_alpn(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let cert = alpn_certificate(name, digest)?;
        lock(&self.alpn).insert(name.to_ascii_lowercase(), cert);
        Ok(())
    }

    /// Closes every challenge (the order is over, either way).
    pub(super) fn close_all(&self) {
        lock(&self.http).clear();
        lock(&self.alpn).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A self-signed certificate for `name` with the critical acmeIdentifier
/// extension holding `digest` (RFC 8737 section 3).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    if digest.len() != 32 {
        return Err("tls-alpn-01: the key authorization digest is not SHA-256".into());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("tls-alpn-01 key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("tls-alpn-01 certificate for {name}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("tls-alpn-01 certificate for {name}: {e}"))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `from_der`: it parses the certificate with webpki, which refuses
    // the critical acmeIdentifier extension this certificate exists for.
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("tls-alpn-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_tokens_are_answered() {
        let c = Challenges::default();
        c.open_http("tok1", "tok1.thumb");
        let get = |m: Method, path: &str| {
            let req = Request::builder().method(m).uri(path).body(()).unwrap();
            c.answer(&req)
        };
        assert_eq!(
            get(Method::GET, "/.well-known/acme-challenge/tok1").as_deref(),
            Some("tok1.thumb")
        );
        assert_eq!(get(Method::GET, "/.well-known/acme-challenge/other"), None);
        assert_eq!(get(Method::POST, "/.well-known/acme-challenge/tok1"), None);
        assert_eq!(get(Method::GET, "/tok1"), None);
        c.close_all();
        assert_eq!(get(Method::GET, "/.well-known/acme-challenge/tok1"), None);
        let req = |m: Method, path: &str| Request::builder().method(m).uri(path).body(()).unwrap();
        assert!(is_challenge(&req(
            Method::GET,
            "/.well-known/acme-challenge/aB-_9"
        )));
        for (m, p) in [
            (Method::POST, "/.well-known/acme-challenge/aB"),
            (Method::GET, "/.well-known/acme-challenge/"),
            (Method::GET, "/.well-known/acme-challenge/../../login"),
            (Method::GET, "/.well-known/acme-challenge/a%2f..%2flogin"),
            (Method::GET, "/.well-known/acme-challenge/a/b"),
        ] {
            assert!(!is_challenge(&req(m, p)), "{p}");
        }
    }

    #[test]
    fn alpn_certificates_exist_only_while_open() {
        let c = Challenges::default();
        assert!(c.alpn_certificate("a.example.com").is_none());
        c.open_alpn("a.example.com", &[7u8; 32]).unwrap();
        assert!(c.alpn_certificate("A.example.com.").is_some());
        assert!(c.alpn_certificate("b.example.com").is_none());
        assert!(c.open_alpn("a.example.com", &[7u8; 31]).is_err());
        c.close_all();
        assert!(c.alpn_certificate("a.example.com").is_none());
    }
}
