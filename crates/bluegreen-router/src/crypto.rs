//! The one rustls crypto provider every TLS config is built with: the edge,
//! the admin listener and the connections to upstreams.

use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// ring, as everywhere in the binary.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
