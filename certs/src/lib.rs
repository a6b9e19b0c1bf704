//! Certificate and key files that reload when they change, for the proxy's client
//! listener and the operator's config service (one implementation for both).
//!
//! cert-manager renews a certificate by updating its Secret; the kubelet then updates the
//! mounted volume by swapping a symlink to a new directory, so watching the files
//! themselves (inotify) sees nothing reliable. [`ReloadingCert`] serves the pair on disk
//! to rustls and reads the files again every few seconds from a background task,
//! comparing a hash of their contents: a new pair that parses and whose key matches the
//! certificate is served to every new handshake; one that does not is logged (once per
//! content) and the serving pair stays. Connections already open keep the certificate
//! they were made with. Serving costs one atomic load per handshake.
//!
//! [`WatchedFile`] is the same content check for one file (the proxy's CA bundle for
//! the operator), for callers that rebuild something when it changes.

// Library code handles every error; tests may unwrap.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The largest certificate, key or CA file read: PEM bundles are kilobytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// How often the files are read again unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The longest interval between checks; longer ones are cut to it.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a certificate, key or bundle cannot be used. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("certificate {path} is not valid PEM: {reason}")]
    CertificatePem { path: String, reason: String },
    #[error("certificate {0} holds no certificate")]
    NoCertificate(String),
    // The PEM parser's error is left out: it may quote a line of the key file.
    #[error("key {0} holds no valid PEM private key")]
    Key(String),
    #[error("certificate {cert} and key {key} cannot be used together: {reason}")]
    Unusable {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("checking certificate files for changes needs a Tokio runtime")]
    NoRuntime,
}

/// What one check of the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The same contents as last time (or the same read error).
    Unchanged,
    /// A new pair, now served.
    Loaded,
    /// New contents that cannot be used (the reason); the previous pair is still served.
    Refused(String),
}

/// A rustls certificate resolver serving the certificate and key in two PEM files, and
/// taking a new pair when the files change (see the crate docs).
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    seen: Mutex<Seen>,
    loaded: AtomicU64,
    refused: AtomicU64,
}

/// What the files held at the last check.
#[derive(PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(String),
}

/// One file read again on demand, telling whether its contents changed.
#[derive(Debug, Clone)]
pub struct WatchedFile {
    path: PathBuf,
    seen: Option<[u8; 32]>,
}

// === impl ReloadingCert ===

impl ReloadingCert {
    /// Reads and checks the pair once; an error when it cannot be served.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, Error> {
        let cert_pem = read_bounded(cert)?;
        let key_pem = read_bounded(key)?;
        let certified = certified_key(&cert_pem, &key_pem, cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(certified),
            seen: Mutex::new(Seen::Content(digest(&cert_pem, &key_pem))),
            loaded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Loads the pair, then checks the files every `interval` (zero: never; at most
    /// `MAX_INTERVAL`) from a background task that ends when the last handle to the
    /// resolver is dropped. Must be called within a Tokio runtime.
    pub fn watch(cert: &Path, key: &Path, interval: Duration) -> Result<Arc<Self>, Error> {
        let resolver = Arc::new(Self::load(cert, key)?);
        let interval = interval.min(MAX_INTERVAL);
        if !interval.is_zero() {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
            runtime.spawn(check_every(Arc::downgrade(&resolver), interval));
        }
        Ok(resolver)
    }

    /// Reads the files again and serves them if they changed and can be used. Blocking
    /// (file reads): call it off the async runtime's threads.
    pub fn check(&self) -> Checked {
        let read = read_bounded(&self.cert).and_then(|cert| Ok((cert, read_bounded(&self.key)?)));
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_pem, key_pem) = match read {
            Ok(pair) => pair,
            Err(error) => {
                let now = Seen::Unreadable(error.to_string());
                if *seen == now {
                    return Checked::Unchanged;
                }
                *seen = now;
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot read the TLS certificate; still serving the previous one");
                return Checked::Refused(error.to_string());
            }
        };
        let now = Seen::Content(digest(&cert_pem, &key_pem));
        if *seen == now {
            return Checked::Unchanged;
        }
        *seen = now;
        match certified_key(&cert_pem, &key_pem, &self.cert, &self.key) {
            Ok(certified) => {
                let fingerprint = certified
                    .cert
                    .first()
                    .map(|leaf| hex::encode(Sha256::digest(leaf)))
                    .unwrap_or_default();
                self.current.store(Arc::new(certified));
                self.loaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    cert = %self.cert.display(),
                    sha256 = %fingerprint,
                    "serving a new TLS certificate"
                );
                Checked::Loaded
            }
            Err(error) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "refused a new TLS certificate; still serving the previous one");
                Checked::Refused(error.to_string())
            }
        }
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// How many new pairs were taken since the first.
    pub fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    /// How many changes were refused (unreadable, unparseable or mismatched files).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl fmt::Debug for ReloadingCert {
    // The key stays out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("loaded", &self.loaded())
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

/// Checks the files every `interval` while the resolver lives.
async fn check_every(resolver: Weak<ReloadingCert>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        // Reading and parsing block: off the runtime's threads.
        if tokio::task::spawn_blocking(move || resolver.check())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A server config whose certificate comes from `resolver`, offering `alpn` in order.
pub fn server_config(
    resolver: Arc<ReloadingCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

// === impl WatchedFile ===

impl WatchedFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seen: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's contents when they differ from the last contents this returned
    /// (always on the first call); `None` when unchanged. Blocking (a file read).
    pub fn changed(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let contents = read_bounded(&self.path)?;
        let now = digest(&contents, &[]);
        if self.seen == Some(now) {
            return Ok(None);
        }
        self.seen = Some(now);
        Ok(Some(contents))
    }
}

// === helpers ===

/// The process's crypto provider, or ring (the one every Switchboard binary installs).
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Reads `path`, refusing files larger than `MAX_FILE_BYTES`.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, Error> {
    let read_error = |source| Error::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut contents = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut contents)
        .map_err(read_error)?;
    if contents.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            path: path.display().to_string(),
        });
    }
    Ok(contents)
}

/// The certificate chain and key in these PEM contents, checked to belong together.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::CertificatePem {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate(cert.display().to_string()));
    }
    let private_key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| Error::Key(key.display().to_string()))?;
    CertifiedKey::from_der(chain, private_key, &provider()).map_err(|e| Error::Unusable {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason: e.to_string(),
    })
}

/// A hash of two files' contents, told apart by the first one's length.
fn digest(first: &[u8], second: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((first.len() as u64).to_le_bytes());
    hash.update(first);
    hash.update(second);
    hash.finalize().into()
}

#[cfg(test)]
mod tests;
