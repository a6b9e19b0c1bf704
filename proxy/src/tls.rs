//! TLS setup shared by every client and server the proxy runs.

/// rustls needs one process-wide crypto provider; ring builds fast and everywhere.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
