//! HTTPS with rustls. The certificate and key files are checked (two `stat`s) whenever a
//! connection arrives and re-read when either has changed, so a renewed certificate (say a
//! Kubernetes Secret updated in place) is served from the next connection on, with no restart
//! and without touching connections already open. A half-written pair that does not parse
//! keeps the previous certificate in service. The accept loop is `crate::listen`'s.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCert(PathBuf),
    #[error("{0} holds no PEM private key: {1}")]
    Key(PathBuf, String),
    #[error("invalid certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

/// What identifies one version of a file: modification time, size and inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub struct ReloadingTls {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<((Stamp, Stamp), Arc<ServerConfig>)>,
}

impl ReloadingTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingTls, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let config = build(cert, key)?;
        Ok(ReloadingTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Mutex::new((stamps, config)),
        })
    }

    /// The configuration for a new connection, re-read first if the files changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.0 != stamps {
            match build(&self.cert, &self.key) {
                Ok(c) => {
                    tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                    *cur = (stamps, c);
                }
                Err(e) => {
                    // Keep serving the old pair; try again when the files change again.
                    tracing::warn!(error = %e, "cannot reload the TLS certificate; keeping the old one");
                    cur.0 = stamps;
                }
            }
        }
        cur.1.clone()
    }
}

fn build(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Read(cert.to_owned(), e))?;
    let key_pem = std::fs::read(key).map_err(|e| TlsError::Read(key.to_owned(), e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Key(key.to_owned(), e.to_string()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
