//! TLS for `serve --tls-cert --tls-key`: the PEM certificate chain and
//! private key, read into a rustls server config (aws-lc-rs provider), and
//! read again on SIGHUP. A new pair that does not load keeps the old one
//! serving, with an error in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM certificate chain: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error(
        "{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1: `-----BEGIN ... PRIVATE KEY-----`): {detail}"
    )]
    BadKey { path: PathBuf, detail: String },
    #[error("the certificate {cert} and the key {key} do not make a TLS configuration: {detail}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Where the certificate and key are read from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The acceptor new connections use; replaced whole on a reload, so a
/// handshake never sees half of an old pair and half of a new one.
#[derive(Clone)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: Arc<RwLock<TlsAcceptor>>,
}

impl ReloadableTls {
    /// Loads the pair; an error here stops `serve` before it listens.
    pub fn load(files: TlsFiles) -> Result<ReloadableTls, TlsError> {
        let config = server_config(&files)?;
        Ok(ReloadableTls {
            files,
            current: Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config)))),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again. Connections already open keep the pair they
    /// were made with; new ones get the new pair.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            TlsAcceptor::from(Arc::new(config));
        Ok(())
    }

    /// Reloads on every SIGHUP, for as long as the hub runs.
    #[cfg(unix)]
    pub fn reload_on_sighup(self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match self.reload() {
                    Ok(()) => tracing::info!(
                        cert = %self.files.cert.display(),
                        key = %self.files.key.display(),
                        "SIGHUP: reloaded the TLS certificate and key"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: the new TLS certificate or key does not load; still serving the previous pair"
                    ),
                }
            }
        }))
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let cert_pem = read(&files.cert, "certificate")?;
    let key_pem = read(&files.key, "key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: files.cert.clone(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            detail: e.to_string(),
        })?;
    // The hub speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}
