//! Certificates from an ACME CA (RFC 8555), obtained and renewed by
//! bluegreen itself with instant-acme: the account and the certificate live
//! in the state store (mode 0600, written atomically), the challenges are
//! answered by our own listeners, renewal starts at two thirds of the
//! lifetime, and failures back off. The CA being unreachable never stops
//! the certificate in use from being served.
//!
//! instant-acme rather than rustls-acme: it is only the protocol, so the
//! certificate stays in our `CertStore` (SNI, files beside it, status) and
//! the account in our state store, where a cluster store can share it.

use super::certs::{from_pem, unix_now, CertStore, Loaded};
use bluegreen_core::config::{AcmeChallenge, AcmeConfig};
use bluegreen_store::StateStore;
use instant_acme::{
    Account, AccountBuilder, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The state store key of the ACME document.
pub const KEY: &str = "acme";

/// Longest wait between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Longest one attempt may take, from account to certificate (the two
/// polls take up to 90 s each).
const ATTEMPT: Duration = Duration::from_secs(300);

/// Longest single sleep: the monotonic clock stops while a host is
/// suspended, so the wall-clock due time is looked at again this often.
const NAP: Duration = Duration::from_secs(3600);

/// The HTTP client ACME talks through (built once, off the async threads).
type AcmeHttp = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    BodyWrapper<bytes::Bytes>,
>;

/// What is kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// The directory the account belongs to.
    directory: Option<String>,
    /// instant-acme's account credentials (its key, base64 PKCS#8).
    account: Option<serde_json::Value>,
    certificate: Option<StoredCert>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredCert {
    domains: Vec<String>,
    /// The directory that issued it (a certificate from staging is not
    /// kept once the config names production).
    #[serde(default)]
    directory: Option<String>,
    chain: String,
    key: String,
}

/// Where ACME stands, for status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AcmeState {
    pub domains: Vec<String>,
    pub directory: String,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt (renewal or retry).
    pub next_attempt: i64,
}

/// Announces an outcome: (ok, what happened).
pub type Announce = Arc<dyn Fn(bool, String) + Send + Sync>;

/// The ACME loop of one router: shared with status.
pub struct Acme {
    config: AcmeConfig,
    store: Arc<dyn StateStore>,
    certs: Arc<CertStore>,
    state: Mutex<AcmeState>,
    /// The certificate in use came from this directory for every
    /// configured name; otherwise it is only a stopgap, renewed at once.
    current: std::sync::atomic::AtomicBool,
    /// What `restore` read, for the loop.
    stored: tokio::sync::Mutex<Option<Stored>>,
    http: tokio::sync::OnceCell<AcmeHttp>,
}

impl Acme {
    pub fn new(config: AcmeConfig, store: Arc<dyn StateStore>, certs: Arc<CertStore>) -> Acme {
        let state = AcmeState {
            domains: config.domains.clone(),
            directory: config.directory.clone(),
            ..AcmeState::default()
        };
        Acme {
            config,
            store,
            certs,
            state: Mutex::new(state),
            current: std::sync::atomic::AtomicBool::new(false),
            stored: tokio::sync::Mutex::new(None),
            http: tokio::sync::OnceCell::new(),
        }
    }

    pub fn state(&self) -> AcmeState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, f: impl FnOnce(&mut AcmeState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs until `stop`: obtains or renews the certificate whenever it is
    /// due (call `restore` first, before the listeners serve).
    pub fn spawn(self: Arc<Self>, announce: Announce, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut stored = self.stored.lock().await.take().unwrap_or_default();
            let mut failures = 0u32;
            let mut retry_at: Option<std::time::Instant> = None;
            loop {
                let due = match (failures, retry_at) {
                    (0, _) | (_, None) => self.renew_in(),
                    (_, Some(at)) => at.saturating_duration_since(std::time::Instant::now()),
                };
                self.set_state(|s| s.next_attempt = unix_now() + due.as_secs() as i64);
                if !due.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(due.min(NAP)) => {}
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
                let attempt = tokio::time::timeout(ATTEMPT, self.obtain(&mut stored));
                let result = tokio::select! {
                    r = attempt => r.unwrap_or_else(|_| Err(format!("no answer within {}s", ATTEMPT.as_secs()))),
                    _ = stop.cancelled() => return,
                };
                self.certs.challenges.close_all();
                match result {
                    Ok((loaded, unsaved)) => {
                        failures = 0;
                        retry_at = None;
                        let what = format!(
                            "acme: certificate for {} issued by {}, valid until {}",
                            loaded.info.names.join(", "),
                            loaded.info.issuer,
                            loaded.info.not_after
                        );
                        tracing::info!("{what}");
                        self.certs.set_acme(loaded);
                        self.current
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        self.set_state(|s| {
                            s.failures = 0;
                            s.last_error = unsaved.clone();
                        });
                        announce(true, what);
                        // In use, but not kept: the next start renews it.
                        if let Some(e) = unsaved {
                            tracing::error!(
                                "acme: the new certificate is in use but could not be saved: {e}"
                            );
                            announce(false, format!("acme: the new certificate is in use but could not be saved: {e}"));
                        }
                    }
                    Err(why) => {
                        failures += 1;
                        let next = backoff(self.config.retry_after, failures);
                        retry_at = Some(std::time::Instant::now() + next);
                        let keeps = match self.certs.acme() {
                            Some(_) => "the certificate in use stays",
                            None => "there is no certificate for these names yet",
                        };
                        let what = format!(
                            "acme: could not obtain a certificate for {} from {}: {why}; {keeps}; next try in {}s",
                            self.config.domains.join(", "),
                            self.config.directory,
                            next.as_secs()
                        );
                        tracing::warn!("{what}");
                        self.set_state(|s| {
                            s.failures = failures;
                            s.last_error = Some(why);
                        });
                        announce(false, what);
                    }
                }
            }
        });
    }

    /// Reads the stored document and puts its certificate in use: for the
    /// names it holds, expired or not, until a renewal replaces it (it is
    /// due at once when it is not from this directory or misses a name).
    pub async fn restore(&self, announce: &Announce) {
        let stored = self.read(announce).await;
        *self.stored.lock().await = Some(stored);
    }

    async fn read(&self, announce: &Announce) -> Stored {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            bluegreen_store::load_json::<Stored>(store.as_ref(), KEY)
        })
        .await;
        let stored = match read {
            Ok(Ok(s)) => s.unwrap_or_default(),
            Ok(Err(e)) => {
                announce(false, format!("acme: {e}; starting a new account"));
                Stored::default()
            }
            Err(e) => {
                announce(false, format!("acme: reading the state failed: {e}"));
                Stored::default()
            }
        };
        if let Some(c) = &stored.certificate {
            let label = self.store.locate(KEY).display().to_string();
            match from_pem(c.chain.as_bytes(), c.key.as_bytes(), &label, &label) {
                Ok(l) => {
                    let current = covers(&l.info.names, &self.config.domains)
                        && c.directory
                            .as_deref()
                            .is_none_or(|d| d == self.config.directory);
                    self.current
                        .store(current, std::sync::atomic::Ordering::SeqCst);
                    self.certs.set_acme(l);
                }
                Err(e) => announce(
                    false,
                    format!("acme: the stored certificate is unusable: {e}"),
                ),
            }
        }
        stored
    }

    /// How long until the certificate in use is due for renewal: two
    /// thirds into its lifetime; now when there is none, or it is only a
    /// stopgap (another directory, a name missing).
    fn renew_in(&self) -> Duration {
        let Some(current) = self.certs.acme() else {
            return Duration::ZERO;
        };
        if !self.current.load(std::sync::atomic::Ordering::SeqCst) {
            return Duration::ZERO;
        }
        let (from, to) = (current.info.not_before, current.info.not_after);
        let due = from + (to - from) * 2 / 3;
        Duration::from_secs((due - unix_now()).max(0) as u64)
    }

    /// One attempt: account, order, challenges, certificate; persisted
    /// before it is used.
    async fn obtain(&self, stored: &mut Stored) -> Result<(Loaded, Option<String>), String> {
        let account = self.account(stored).await?;
        let ids: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let order = match account.new_order(&NewOrder::new(&ids)).await {
            Err(instant_acme::Error::Api(p)) if is_unknown_account(&p) => {
                // The CA forgot the account (a reset test CA, a deactivated
                // account): register again, once.
                stored.account = None;
                let account = self.account(stored).await?;
                account.new_order(&NewOrder::new(&ids)).await
            }
            other => other,
        };
        let mut order = order.map_err(|e| format!("new order: {e}"))?;
        let kind = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let challenges = &self.certs.challenges;
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| format!("authorization: {e}"))?;
            let name = a.identifier().to_string();
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(format!("{name}: the authorization is {s:?}")),
            }
            let mut ch = a
                .challenge(kind.clone())
                .ok_or_else(|| {
                    format!("{name}: the CA offers no {kind:?} challenge (try the other tls.acme.challenge)")
                })?;
            let key_auth = ch.key_authorization();
            match self.config.challenge {
                AcmeChallenge::Http01 => challenges.open_http(&ch.token, key_auth.as_str()),
                AcmeChallenge::TlsAlpn01 => {
                    challenges.open_alpn(&name, key_auth.digest().as_ref())?
                }
            }
            ch.set_ready()
                .await
                .map_err(|e| format!("{name}: challenge: {e}"))?;
        }
        let polling = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&polling)
            .await
            .map_err(|e| format!("order: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "the order is {status:?}: {}",
                failed_challenges(&mut order).await
            ));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&polling)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let label = self.store.locate(KEY).display().to_string();
        let loaded = from_pem(chain.as_bytes(), key.as_bytes(), &label, &label)?;
        stored.certificate = Some(StoredCert {
            domains: self.config.domains.clone(),
            directory: Some(self.config.directory.clone()),
            chain,
            key,
        });
        // A certificate the CA issued is used even if it cannot be kept:
        // ordering it again would spend the CA's rate limits.
        let unsaved = self.persist(stored).await.err();
        Ok((loaded, unsaved))
    }

    /// The stored account for this directory, or a new one (persisted).
    async fn account(&self, stored: &mut Stored) -> Result<Account, String> {
        if stored.directory.as_deref() == Some(&self.config.directory) {
            if let Some(creds) = stored.account.clone() {
                let creds = serde_json::from_value(creds)
                    .map_err(|e| format!("the stored account does not parse: {e}"))?;
                return self
                    .builder()
                    .await?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("directory {}: {e}", self.config.directory));
            }
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = self
            .builder()
            .await?
            .create(&new, self.config.directory.clone(), None)
            .await
            .map_err(|e| format!("new account at {}: {e}", self.config.directory))?;
        stored.directory = Some(self.config.directory.clone());
        stored.account = Some(serde_json::to_value(&creds).map_err(|e| e.to_string())?);
        self.persist(stored).await?;
        Ok(account)
    }

    async fn builder(&self) -> Result<AccountBuilder, String> {
        let bundle = self.config.ca_bundle.clone();
        let http = self
            .http
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || acme_http(bundle.as_deref()))
                    .await
                    .map_err(|e| e.to_string())?
            })
            .await?;
        Ok(Account::builder_with_http(Box::new(http.clone())))
    }

    /// Writes the document atomically, off the async threads.
    async fn persist(&self, stored: &Stored) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(stored).map_err(|e| e.to_string())?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put(KEY, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// Why the CA refused: each failed challenge's problem.
async fn failed_challenges(order: &mut instant_acme::Order) -> String {
    let mut why = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(a)) = authzs.next().await {
        for c in &a.challenges {
            if let Some(p) = &c.error {
                why.push(format!("{}: {p}", a.identifier()));
            }
        }
    }
    if why.is_empty() {
        "the CA gave no reason".into()
    } else {
        why.join("; ")
    }
}

/// Only a CA that says it does not know the account gets a new
/// registration (an `unauthorized` may be anything; re-registering on it
/// would lose the account and spend the CA's limits).
fn is_unknown_account(p: &instant_acme::Problem) -> bool {
    p.r#type
        .as_deref()
        .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
}

/// Every configured name is in the certificate (in any case; the CA may
/// add more).
fn covers(names: &[String], wanted: &[String]) -> bool {
    wanted
        .iter()
        .all(|w| names.iter().any(|n| n.eq_ignore_ascii_case(w)))
}

/// An HTTPS client trusting every certificate in `bundle`, or the
/// system's roots (blocking: file reads).
fn acme_http(bundle: Option<&std::path::Path>) -> Result<AcmeHttp, String> {
    let roots = match bundle {
        Some(path) => super::roots_from_pem(path).map_err(|e| format!("tls.acme.ca_bundle {e}"))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots
        }
    };
    if roots.is_empty() {
        return Err(
            "no CA certificates to check the ACME server with (set tls.acme.ca_bundle)".into(),
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// `first`, doubled for each failure after the first, at most an hour.
fn backoff(first: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(MAX_BACKOFF.max(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let m = Duration::from_secs(60);
        assert_eq!(backoff(m, 1), m);
        assert_eq!(backoff(m, 2), m * 2);
        assert_eq!(backoff(m, 4), m * 8);
        assert_eq!(backoff(m, 40), MAX_BACKOFF);
    }

    #[test]
    fn a_certificate_covers_the_names_it_holds() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(covers(
            &v(&["b.example", "A.example"]),
            &v(&["a.example", "b.example"])
        ));
        assert!(covers(
            &v(&["a.example", "extra.example"]),
            &v(&["a.example"])
        ));
        assert!(!covers(&v(&["a.example"]), &v(&["a.example", "b.example"])));
    }
}
