//! The bearer token proxies present to the config service: read from its file (mounted
//! from a Secret) at start and again every few seconds off the runtime's workers, so a
//! rotated token takes effect without a restart and no poll waits on the disk.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Token files longer than this are refused: a token is a few dozen bytes.
const MAX_TOKEN_BYTES: usize = 4096;

/// The current token, refreshed from its file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    current: RwLock<Option<Arc<str>>>,
}

impl TokenFile {
    /// Reads the file now, then every `every` while the returned value lives.
    pub fn watch(path: PathBuf, every: Duration) -> Arc<Self> {
        let token = Arc::new(Self {
            current: RwLock::new(read(&path)),
            path,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh_every(Arc::downgrade(&token), every));
        }
        token
    }

    /// The token, or `None` when the file is missing, empty or too long.
    pub fn current(&self) -> Option<Arc<str>> {
        // A poisoned lock still holds a whole value: it is replaced, never edited.
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, token: Option<Arc<str>>) {
        match self.current.write() {
            Ok(mut current) => *current = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }
}

async fn refresh_every(token: Weak<TokenFile>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let Some(token) = token.upgrade() else { return };
        let path = token.path.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || read(&path)).await else {
            return;
        };
        if read.is_none() && token.current().is_some() {
            tracing::error!(file = %token.path.display(), "token file is missing, empty or too long; refusing every proxy until it is fixed");
        }
        token.set(read);
    }
}

/// The file's trimmed content, if it is a usable token. Never logged.
fn read(path: &std::path::Path) -> Option<Arc<str>> {
    let bytes = switchboard_certs::read_bounded(path).ok()?;
    if bytes.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| Arc::from(token))
}
