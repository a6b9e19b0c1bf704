//! TLS setup shared by every client and server the proxy runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchboard_certs::ReloadingCert;
use tokio_rustls::TlsAcceptor;

/// rustls needs one process-wide crypto provider; ring builds fast and everywhere.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client listener's TLS: the certificate and key in these files, read again every
/// `reload_every` (see `switchboard_certs`), HTTP/2 and HTTP/1.1 offered by ALPN.
/// Returns the acceptor and the resolver (which says how many reloads were taken).
pub fn client_acceptor(
    cert: &Path,
    key: &Path,
    reload_every: Duration,
) -> anyhow::Result<(TlsAcceptor, Arc<ReloadingCert>)> {
    let resolver = ReloadingCert::watch(cert, key, reload_every)
        .context("cannot serve TLS (--tls-cert, --tls-key)")?;
    let config = switchboard_certs::server_config(resolver.clone(), &[b"h2", b"http/1.1"])?;
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}
