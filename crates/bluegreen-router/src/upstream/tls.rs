//! HTTPS to upstreams (`[environments.SIDE.tls]`): rustls with the same
//! provider as the edge, the system's roots or a given CA, SNI and the
//! name checked from the upstream's host or `server_name`, ALPN
//! `http/1.1` (the upstream pool speaks HTTP/1.1), sessions resumed.

use bluegreen_core::config::UpstreamTlsConfig;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How one side's upstreams are reached over TLS.
pub struct UpstreamTls {
    connector: TlsConnector,
    /// Overrides each upstream's own host as SNI and checked name.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl UpstreamTls {
    /// The client side for a config; the error names the file or name.
    pub fn new(config: &UpstreamTlsConfig) -> Result<UpstreamTls, String> {
        let roots = match &config.ca {
            Some(path) => bluegreen_store::roots_from_pem(path)?,
            None => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(
                        "no system CA certificates found: set tls.ca to the upstreams' CA".into(),
                    );
                }
                roots
            }
        };
        let mut client = ClientConfig::builder_with_provider(crate::crypto::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = config
            .server_name
            .as_ref()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|e| format!("tls.server_name {n:?}: {e}"))
            })
            .transpose()?;
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The `Host` a health check sends: `server_name:port` when a name is
    /// configured (name-based HTTPS upstreams route by it), else none.
    pub fn host_header(&self, address: &str) -> Option<String> {
        let name = match self.server_name.as_ref()? {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => return None,
        };
        let port = address.rsplit_once(':').map(|(_, p)| p)?;
        Some(format!("{name}:{port}"))
    }

    /// The TLS handshake over a connected stream to `address` (`host:port`).
    pub async fn handshake(
        &self,
        stream: TcpStream,
        address: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_name(address)?,
        };
        self.connector.connect(name, stream).await
    }
}

/// The host of `host:port` (an IPv6 literal without its brackets) as a name
/// to send and check.
fn host_name(address: &str) -> std::io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} cannot be checked against a certificate: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn the_host_is_the_name() {
        assert_eq!(
            format!("{:?}", host_name("app.internal:8443").unwrap()),
            format!(
                "{:?}",
                rustls::pki_types::ServerName::try_from("app.internal").unwrap()
            )
        );
        assert!(host_name("[::1]:8443").is_ok());
        assert!(host_name("127.0.0.1:8443").is_ok());
    }
}
