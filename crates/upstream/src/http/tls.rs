//! The TLS client setup shared by every backend: rustls with ring, the webpki roots, and
//! ALPN offering HTTP/1.1 only.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

pub fn config(roots: RootCertStore) -> ClientConfig {
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// A connector trusting only the PEM certificates in `path`.
pub fn from_file(path: &Path) -> Result<TlsConnector, String> {
    let bad = |e: &dyn std::fmt::Display| format!("`ca_file` {}: {e}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    Ok(TlsConnector::from(Arc::new(config(roots))))
}

/// The connector trusting the webpki roots, shared by every backend.
pub fn connector() -> TlsConnector {
    static SHARED: OnceLock<TlsConnector> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            TlsConnector::from(Arc::new(config(roots)))
        })
        .clone()
}

/// The TLS session over `tcp`, its certificate checked for `host`.
pub async fn handshake(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    connector.connect(name, tcp).await
}
