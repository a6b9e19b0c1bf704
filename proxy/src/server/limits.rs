//! How many connections and requests the proxy takes on: the flags, lowered to fit
//! the process's open-file limit.

use std::time::Duration;

use crate::settings::Settings;

/// Descriptors kept for everything other than client connections and their calls
/// upstream: the listeners, metrics scrapes, Redis, the operator, files, and the spare
/// connections that answer probes when the proxy is full.
const RESERVED_FILES: u64 = 256;

/// The bounds the server applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections served at once.
    pub connections: usize,
    /// Requests served at once (probes aside).
    pub requests: usize,
    /// From accepting a connection to its first byte.
    pub first_byte: Duration,
    /// How long a connection may be quiet with no request open.
    pub idle: Duration,
}

// === impl Limits ===

impl Limits {
    /// The limits for this process: its soft open-file limit is raised to the hard one
    /// first (as Go's runtime does: the soft limit is often a low default meant for
    /// old `select` users), then the flags are fitted to it.
    pub fn for_process(settings: &Settings) -> Self {
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => Some(limit),
            Err(error) => {
                tracing::warn!(%error, "cannot read or raise the open-file limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE)
                    .ok()
                    .map(|(soft, _)| soft)
            }
        };
        let limits = Self::fitted(settings, open_files);
        if limits.connections < settings.max_connections
            || limits.requests < settings.max_requests_in_flight
        {
            tracing::warn!(
                open_files,
                connections = limits.connections,
                requests_in_flight = limits.requests,
                "the open-file limit is too low for --max-connections and \
                 --max-requests-in-flight: both are lowered to fit it"
            );
        }
        limits
    }

    /// The flags, lowered when `open_files` cannot hold them: each connection takes a
    /// descriptor, and each request in flight at most one more for its provider (the
    /// idle pooled connections to providers are never more than the requests in flight
    /// that opened them).
    fn fitted(settings: &Settings, open_files: Option<u64>) -> Self {
        let mut limits = Self {
            connections: settings.max_connections.max(1),
            requests: settings.max_requests_in_flight.max(1),
            first_byte: settings.connection_first_byte_timeout,
            idle: settings.connection_idle_timeout,
        };
        if let Some(open_files) = open_files {
            let budget = usize::try_from(open_files.saturating_sub(RESERVED_FILES))
                .unwrap_or(usize::MAX)
                .max(2);
            limits.requests = limits.requests.min(budget / 2);
            limits.connections = limits.connections.min(budget - limits.requests);
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(connections: usize, requests: usize) -> Settings {
        let mut settings = Settings::for_manifests("/nowhere");
        settings.max_connections = connections;
        settings.max_requests_in_flight = requests;
        settings
    }

    #[test]
    fn the_flags_hold_when_the_open_file_limit_allows() {
        let limits = Limits::fitted(&settings(10_000, 1_000), Some(1 << 20));
        assert_eq!((limits.connections, limits.requests), (10_000, 1_000));
        let limits = Limits::fitted(&settings(10_000, 1_000), None);
        assert_eq!((limits.connections, limits.requests), (10_000, 1_000));
    }

    #[test]
    fn a_low_open_file_limit_lowers_both() {
        let limits = Limits::fitted(&settings(10_000, 1_000), Some(1024));
        assert_eq!((limits.connections, limits.requests), (384, 384));
        assert!(limits.connections + limits.requests + RESERVED_FILES as usize <= 1024);
        // Even below the reserve, the proxy serves something.
        let limits = Limits::fitted(&settings(10_000, 1_000), Some(100));
        assert_eq!((limits.connections, limits.requests), (1, 1));
    }
}
