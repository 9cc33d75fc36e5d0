//! Where state lives. A small key-value interface, so the embedded file store
//! can later sit beside an etcd store without the router or the pipeline
//! noticing, plus typed helpers for the documents bluegreen keeps.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod etcd;
mod file;

pub use cluster::Cluster;
pub use etcd::EtcdStore;
pub use file::FileStore;

use bluegreen_core::state::{InvalidState, RouterState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Key of the router state (live side and switch history).
pub const ROUTER_KEY: &str = "state";
/// Key of the deploy book (current deploy, history, what each side runs).
pub const DEPLOYS_KEY: &str = "deploys";
/// Key of the supervisor's process table.
pub const PROCESSES_KEY: &str = "processes";

/// Persists documents by key. `put` is atomic: after a crash at any moment,
/// `get` returns either the old or the new value whole.
pub trait StateStore: Send + Sync + 'static {
    /// The stored value, or `None` when nothing was ever stored.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the value atomically and durably.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Where a key lives, for messages.
    fn locate(&self, key: &str) -> PathBuf;
    /// Hands the state to another process (a hitless upgrade): every later
    /// `put` fails until `reacquire`. A store without a process-exclusive
    /// lock has nothing to hand over.
    fn release(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes the state back after a handover that did not happen.
    fn reacquire(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The shared side, for a store that several router nodes share.
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        None
    }
}

/// Store failures, each naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({reason}); refusing to start on unknown state. Fix or move the file aside")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state file {path} is not usable: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InvalidState,
    },
    #[error(
        "state dir {path} is in use by another bluegreen process (lock file {path}/lock is held)"
    )]
    Locked { path: PathBuf },
    #[error("not written to {path}: the state was handed to a new bluegreen process (upgrade)")]
    HandedOver { path: PathBuf },
    #[error("etcd ({endpoints}): {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error("{key} was changed by another node since this one read it; nothing was written (the change from the other node is applied here in a moment; try again)")]
    Conflict { key: String },
}

/// Reads a JSON document; a value that does not parse is `Corrupt`.
pub fn load_json<T: DeserializeOwned>(
    store: &dyn StateStore,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match store.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: store.locate(key),
                reason: e.to_string(),
            }),
    }
}

/// Writes a JSON document atomically.
pub fn save_json<T: Serialize>(
    store: &dyn StateStore,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("state serialises");
    bytes.push(b'\n');
    store.put(key, &bytes)
}

/// Reads and checks the router state.
pub fn load_router(store: &dyn StateStore) -> Result<Option<RouterState>, StoreError> {
    let state: Option<RouterState> = load_json(store, ROUTER_KEY)?;
    if let Some(s) = &state {
        s.validate().map_err(|source| StoreError::Invalid {
            path: store.locate(ROUTER_KEY),
            source,
        })?;
    }
    Ok(state)
}

/// Writes the router state.
pub fn save_router(store: &dyn StateStore, state: &RouterState) -> Result<(), StoreError> {
    save_json(store, ROUTER_KEY, state)
}

/// A PEM parse error in words. rustls-pki-types prints the marker it did
/// not find as a list of byte values (`missing section end marker: [67,
/// 69, ...]`); this says `missing "-----END CERTIFICATE-----"`.
pub fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
    match e {
        E::MissingSectionEnd { end_marker } => {
            format!("missing \"-----END {}-----\"", text(end_marker))
        }
        E::IllegalSectionStart { line } => {
            format!("malformed section start {:?}", text(line))
        }
        other => other.to_string(),
    }
}

/// Every certificate of a PEM file as trust roots (a private CA, a test
/// CA's bundle); the error names the file and what is wrong.
pub fn roots_from_pem(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let file = path.display();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{file}: cannot read: {}", pem_error(&e)))?
    {
        let cert = cert.map_err(|e| format!("{file}: not PEM certificates: {}", pem_error(&e)))?;
        roots
            .add(cert)
            .map_err(|e| format!("{file}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{file}: holds no PEM certificate"));
    }
    Ok(roots)
}

#[cfg(test)]
mod pem_tests {
    use super::roots_from_pem;

    #[test]
    fn a_pem_error_names_the_marker_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let e = roots_from_pem(&file).unwrap_err();
        assert!(
            e.ends_with(r#"not PEM certificates: missing "-----END CERTIFICATE-----""#),
            "{e}"
        );
        std::fs::write(&file, "-----BEGIN CERTIFICATE---\nMIIB\n").unwrap();
        let e = roots_from_pem(&file).unwrap_err();
        assert!(
            e.contains(r#"malformed section start "-----BEGIN CERTIFICATE---""#),
            "{e}"
        );
    }
}
