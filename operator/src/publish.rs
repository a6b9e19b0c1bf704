//! Holds the Snapshot the operator serves and wakes the proxies waiting for a new one.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_api::Snapshot;
use tokio::sync::watch;

/// A Snapshot as it is sent: serialized once, shared by every proxy request.
#[derive(Debug)]
pub struct Published {
    pub version: String,
    /// The Snapshot as JSON.
    pub body: Bytes,
}

/// The current Snapshot; cloning shares it.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: watch::Sender<Option<Arc<Published>>>,
}

// === impl Publisher ===

impl Default for Publisher {
    fn default() -> Self {
        Self {
            tx: watch::channel(None).0,
        }
    }
}

impl Publisher {
    /// Publishes `snapshot` unless it is the version already served; true if published.
    pub fn publish(&self, snapshot: &Snapshot) -> bool {
        if self
            .current()
            .is_some_and(|current| current.version == snapshot.version)
        {
            return false;
        }
        // A Snapshot is plain data (string-keyed maps); serializing it cannot fail.
        let body = serde_json::to_vec(snapshot).unwrap_or_default();
        self.tx.send_replace(Some(Arc::new(Published {
            version: snapshot.version.clone(),
            body: Bytes::from(body),
        })));
        true
    }

    /// The Snapshot being served, once one compiled.
    pub fn current(&self) -> Option<Arc<Published>> {
        self.tx.borrow().clone()
    }

    /// Wakes on every publish.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.tx.subscribe()
    }
}
