//! TLS as both binaries set it up: one crypto provider (ring) for the process, and a PEM bundle
//! of CA certificates to trust alone.

/// A certificate file that cannot be used: which, and why.
#[derive(Debug, thiserror::Error)]
#[error("TLS file {path}: {message}")]
pub struct CertificateError {
    pub path: String,
    pub message: String,
}

/// Installs the process's TLS provider (ring) once; later calls are no-ops.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM bundle, to trust alone (`ca_cert`, the CLI's `--ca-cert`); a file
/// without any is refused.
pub fn ca_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, CertificateError> {
    let tls_error = |message: String| CertificateError { path: path.display().to_string(), message };
    let pem = std::fs::read(path).map_err(|e| tls_error(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| tls_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_error("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}
