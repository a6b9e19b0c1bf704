//! The proxies connected to this replica and the config version each serves, learnt
//! from their long-poll requests (each carries the version the proxy serves).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A proxy between two polls still counts as connected for this long.
pub const GRACE: Duration = Duration::from_secs(5);

/// What is known about one proxy. Never holds its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyReport {
    /// The id the proxy gave (its pod name in a cluster).
    pub id: String,
    /// The config version it serves; empty when it serves none yet.
    pub version: String,
    /// Its address as this replica sees it.
    pub address: String,
    /// The operator replica it is connected to.
    pub replica: String,
    /// Unix seconds of its first poll in this connection.
    pub connected_since: u64,
}

/// Proxies connected to this replica.
#[derive(Debug)]
pub struct ProxyTable {
    replica: String,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped when a proxy connects or reports a new version.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Entry {
    report: ProxyReport,
    /// Polls in flight.
    polls: u32,
    last_seen: Instant,
}

/// Held while a poll is in flight; marks the proxy as seen when dropped.
#[derive(Debug)]
pub struct Poll {
    table: Arc<ProxyTable>,
    id: String,
}

// === impl ProxyTable ===

impl ProxyTable {
    pub fn new(replica: impl Into<String>) -> Self {
        Self {
            replica: replica.into(),
            entries: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    /// Records a poll from proxy `id` serving `version`.
    pub fn poll(self: &Arc<Self>, id: &str, version: &str, address: SocketAddr) -> Poll {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let connected = |e: &Entry| e.polls > 0 || now.duration_since(e.last_seen) < GRACE;
        let entry = entries.entry(id.to_string()).or_insert_with(|| Entry {
            report: ProxyReport {
                id: id.to_string(),
                version: String::new(),
                address: String::new(),
                replica: self.replica.clone(),
                connected_since: unix_now(),
            },
            polls: 0,
            last_seen: now,
        });
        let reconnected = !connected(entry);
        if reconnected {
            entry.report.connected_since = unix_now();
        }
        let changed = reconnected || entry.report.version != version;
        entry.report.version = version.to_string();
        entry.report.address = address.to_string();
        entry.polls += 1;
        entry.last_seen = now;
        drop(entries);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        Poll {
            table: self.clone(),
            id: id.to_string(),
        }
    }

    /// Proxies polling now or within `GRACE`, sorted by id. Forgets the others.
    pub fn connected(&self) -> Vec<ProxyReport> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        entries.retain(|_, e| e.polls > 0 || now.duration_since(e.last_seen) < GRACE);
        let mut reports: Vec<ProxyReport> = entries.values().map(|e| e.report.clone()).collect();
        reports.sort_by(|a, b| a.id.cmp(&b.id));
        reports
    }

    /// Wakes when a proxy connects or reports a new version. Disconnects are noticed by
    /// calling `connected()` (after `GRACE`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

// === impl Poll ===

impl Drop for Poll {
    fn drop(&mut self) {
        let mut entries = self
            .table
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(&self.id) {
            entry.polls = entry.polls.saturating_sub(1);
            entry.last_seen = Instant::now();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
