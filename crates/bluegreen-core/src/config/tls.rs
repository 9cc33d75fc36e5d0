//! `[tls]` and `[tls.acme]`: HTTPS listeners, certificate files, and
//! certificates obtained from an ACME CA.

use super::checker::Checker;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// TLS termination: HTTPS listeners in front of the same request path.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// HTTPS live traffic (`proxy.listen` stays plain HTTP).
    pub listen: SocketAddr,
    /// HTTPS traffic to the idle side only, if enabled.
    pub preview_listen: Option<SocketAddr>,
    /// Certificate chains and keys (PEM); SNI picks by the names in each;
    /// the first is the default for clients that send no name.
    pub certificates: Vec<CertificatePair>,
    /// Oldest protocol accepted: TLS 1.2 or 1.3.
    pub min_version: TlsVersion,
    /// `Strict-Transport-Security` sent on HTTPS answers, if set.
    pub hsts: Option<String>,
    /// `proxy.listen` answers 308 to the same URL on HTTPS.
    pub redirect_http: bool,
    /// Certificates obtained and renewed from an ACME CA, if set.
    pub acme: Option<AcmeConfig>,
}

/// `[tls.acme]`: one certificate for `domains`, obtained from `directory`
/// and renewed at two thirds of its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    pub domains: Vec<String>,
    /// `mailto:` address the CA may write to about the account.
    pub contact: Option<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// PEM roots to trust for the CA's own HTTPS (a private or test CA).
    pub ca_bundle: Option<PathBuf>,
    /// How the CA checks we hold the names.
    pub challenge: AcmeChallenge,
    /// First wait after a failed attempt; it doubles up to an hour.
    pub retry_after: Duration,
}

/// The challenge our own listeners answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// On `tls.listen` (port 443 at the CA's end): nothing else needs to be open.
    TlsAlpn01,
    /// On `proxy.listen` (port 80 at the CA's end), exempt from `redirect_http`.
    Http01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// One certificate chain file and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTls {
    listen: String,
    preview_listen: Option<String>,
    #[serde(default)]
    certificates: Vec<RawCertificate>,
    min_version: Option<String>,
    hsts: Option<String>,
    redirect_http: Option<bool>,
    acme: Option<RawAcme>,
}

#[derive(Debug, Deserialize)]
struct RawAcme {
    #[serde(default)]
    domains: Vec<String>,
    contact: Option<String>,
    directory: Option<String>,
    ca_bundle: Option<String>,
    challenge: Option<String>,
    retry_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawCertificate {
    cert: String,
    key: String,
}

/// `[tls]`: addresses, certificate files that exist (their contents, key
/// and names are checked when they are loaded), the oldest version.
pub(super) fn validate_tls(raw: &RawTls, base: &Path, c: &mut Checker) -> Option<TlsConfig> {
    let listen = c.addr("tls.listen", &raw.listen);
    let preview_listen = raw
        .preview_listen
        .as_deref()
        .and_then(|p| c.addr("tls.preview_listen", p));
    if raw.certificates.is_empty() && raw.acme.is_none() {
        c.issue(
            "tls.certificates",
            "must list at least one { cert = \"chain.pem\", key = \"key.pem\" } (or add [tls.acme])",
        );
    }
    let mut certificates = Vec::new();
    for (i, pair) in raw.certificates.iter().enumerate() {
        let mut file =
            |what: &str, raw: &str| c.file(&format!("tls.certificates[{i}].{what}"), base, raw);
        if let (Some(cert), Some(key)) = (file("cert", &pair.cert), file("key", &pair.key)) {
            certificates.push(CertificatePair { cert, key });
        }
    }
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            c.issue(
                "tls.min_version",
                format!(
                    "{other:?}: expected \"1.2\" or \"1.3\" (older versions are never accepted)"
                ),
            );
            TlsVersion::V1_2
        }
    };
    if let Some(h) = &raw.hsts {
        if h.is_empty() || !h.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            c.issue(
                "tls.hsts",
                format!("{h:?} is not a header value like \"max-age=31536000\""),
            );
        }
    }
    Some(TlsConfig {
        listen: listen?,
        preview_listen,
        certificates,
        min_version,
        hsts: raw.hsts.clone(),
        redirect_http: raw.redirect_http.unwrap_or(false),
        acme: raw.acme.as_ref().and_then(|a| validate_acme(a, base, c)),
    })
}

/// `[tls.acme]`: names a CA can issue for by HTTP-01 or TLS-ALPN-01, an
/// HTTPS directory, a contact it can use.
fn validate_acme(raw: &RawAcme, base: &Path, c: &mut Checker) -> Option<AcmeConfig> {
    let before = c.issues.len();
    if raw.domains.is_empty() {
        c.issue(
            "tls.acme.domains",
            "must list at least one name, e.g. [\"example.com\"]",
        );
    }
    let mut domains: Vec<String> = Vec::new();
    for (i, d) in raw.domains.iter().enumerate() {
        let name = d.trim_end_matches('.').to_ascii_lowercase();
        if let Err(why) = dns_name(&name) {
            c.issue(format!("tls.acme.domains[{i}]"), format!("{d:?} {why}"));
        } else if domains.contains(&name) {
            c.issue(
                format!("tls.acme.domains[{i}]"),
                format!("{d:?} is listed twice"),
            );
        } else {
            domains.push(name);
        }
    }
    if let Some(contact) = &raw.contact {
        if !contact.starts_with("mailto:") || !contact.contains('@') {
            c.issue(
                "tls.acme.contact",
                format!("{contact:?}: expected \"mailto:ops@example.com\""),
            );
        }
    }
    let directory = raw
        .directory
        .clone()
        .unwrap_or_else(|| LETS_ENCRYPT.to_string());
    let host = directory.strip_prefix("https://").unwrap_or("");
    match host.split(['/', ':']).next() {
        Some(h) if !h.is_empty() && !directory.contains(char::is_whitespace) => {}
        _ => c.issue(
            "tls.acme.directory",
            format!("{directory:?}: expected the CA's https:// directory URL"),
        ),
    }
    let ca_bundle = raw
        .ca_bundle
        .as_ref()
        .and_then(|f| c.pem_file("tls.acme.ca_bundle", base, f));
    let challenge = match raw.challenge.as_deref() {
        None | Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some("http-01") => AcmeChallenge::Http01,
        Some(other) => {
            c.issue(
                "tls.acme.challenge",
                format!("{other:?}: expected \"tls-alpn-01\" (on tls.listen) or \"http-01\" (on proxy.listen); dns-01 is not answered by bluegreen"),
            );
            AcmeChallenge::TlsAlpn01
        }
    };
    let retry_after = c.duration(
        "tls.acme.retry_after",
        raw.retry_after.as_deref(),
        Duration::from_secs(60),
    );
    if retry_after < Duration::from_secs(1) {
        c.issue(
            "tls.acme.retry_after",
            "must be at least 1s: retries any faster only hammer the CA",
        );
    }
    (c.issues.len() == before).then(|| AcmeConfig {
        domains,
        contact: raw.contact.clone(),
        directory,
        ca_bundle,
        challenge,
        retry_after,
    })
}

/// A name an ACME CA can validate over HTTP or TLS: no wildcard (that needs
/// DNS-01), no IP address, at least two labels of letters, digits and `-`.
fn dns_name(name: &str) -> Result<(), &'static str> {
    if name.starts_with("*.") {
        return Err(
            "is a wildcard: wildcards need the dns-01 challenge, which bluegreen does not answer",
        );
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address: list DNS names");
    }
    if name.len() > 253 || !name.contains('.') {
        return Err("is not a fully qualified DNS name (like \"example.com\")");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err("is not a valid DNS name (labels of letters, digits and '-')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dns_name;

    #[test]
    fn acme_names_are_checked() {
        assert!(dns_name("shop.example.com").is_ok());
        assert!(dns_name("xn--bcher-kva.example").is_ok());
        for bad in [
            "*.example.com",
            "localhost",
            "127.0.0.1",
            "a..b",
            "-a.com",
            "a_b.com",
        ] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
    }
}
