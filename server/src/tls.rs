//! The collector's TLS: a certificate chain and key from PEM files (`[tls] cert`, `key`), and for
//! mutual TLS the CA that agents' client certificates must chain to (`[tls] client_ca`).
//!
//! Certificates rotate: the files are looked at every few seconds and, when one changed, loaded
//! again; new connections get the new configuration, connections already open keep theirs. A
//! rotation that does not load (a key that does not match, a half-written file) is logged and the
//! configuration in use is kept: a typo must not take the fleet's collector off the air.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3 only (rustls has nothing older).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the files are looked at for a rotation.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Why the TLS files could not be used, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TlsError {
    pub path: String,
    pub problem: String,
}

impl TlsError {
    fn new(path: &Path, problem: impl Into<String>) -> Self {
        TlsError { path: path.display().to_string(), problem: problem.into() }
    }
}

/// The files a TLS configuration is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Clients must present a certificate that chains to this CA (PEM); `None`: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [self.cert.as_path(), self.key.as_path()].into_iter().chain(self.client_ca.as_deref())
    }

    /// Modification time and size of each file: what a rotation changes.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

/// A TLS configuration that follows its files. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files now; any problem stops the start.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = build(&files)?;
        Ok(Tls { files: Arc::new(files), current: Arc::new(RwLock::new(Arc::new(config))) })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the configuration in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        TlsAcceptor::from(config)
    }

    /// Looks at the files every [`RELOAD_EVERY`] until `shutdown`, loading them again when one
    /// changed.
    pub async fn follow(self, shutdown: CancellationToken) {
        let mut seen = self.files.stamp();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            let now = self.files.stamp();
            if now == seen {
                continue;
            }
            match build(&self.files) {
                Ok(config) => {
                    *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
                    seen = now;
                    info!(cert = %self.files.cert.display(), "TLS files changed; new connections use them");
                }
                Err(e) => {
                    // Seen, so that the same broken files are not logged every few seconds; the
                    // next change is tried again.
                    seen = now;
                    warn!(error = %e, "TLS files changed but do not load; still serving the previous ones");
                }
            }
        }
    }
}

fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::new(&files.key, format!("no private key could be read: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new(&files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::new(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::new(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::new(&files.key, format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in a PEM file; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "holds no certificate (a PEM `BEGIN CERTIFICATE` block)"));
    }
    Ok(certs)
}
