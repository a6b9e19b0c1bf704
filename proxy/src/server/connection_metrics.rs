//! The server's own metrics, registered beside the others (as the cache's and the
//! quotas' are): client connections open, and those the proxy closed, by reason.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use switchboard_metrics::Family;

use super::connection::Closed;

/// Resolved once: a closing connection only increments a counter it already holds.
pub struct ConnectionMetrics {
    open: IntGauge,
    refused: IntCounter,
    first_byte: IntCounter,
    idle: IntCounter,
    stalled: IntCounter,
}

/// A connection's place in `switchboard_client_connections`, until it is dropped.
pub struct Counted(Option<IntGauge>);

// === impl ConnectionMetrics ===

impl ConnectionMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGauge::new(
            "switchboard_client_connections",
            "Client connections open (spare ones, kept to answer probes when full, included).",
        )?;
        let closed: Family<IntCounterVec, 1> = Family::new(
            Opts::new(
                "switchboard_client_connections_closed_total",
                "Client connections the proxy closed, by reason: refused (past \
                 --max-connections and the spare ones), first_byte_timeout, idle_timeout, \
                 client_stalled (a response the client did not read).",
            ),
            ["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        let reason = |why: Closed| closed.with([why.as_str()]);
        Ok(Self {
            refused: reason(Closed::Refused),
            first_byte: reason(Closed::FirstByte),
            idle: reason(Closed::Idle),
            stalled: reason(Closed::Stalled),
            open,
        })
    }

    pub fn closed(&self, why: Closed) {
        match why {
            Closed::Refused => &self.refused,
            Closed::FirstByte => &self.first_byte,
            Closed::Idle => &self.idle,
            Closed::Stalled => &self.stalled,
        }
        .inc();
    }

    pub fn opened(&self) -> Counted {
        self.open.inc();
        Counted(Some(self.open.clone()))
    }
}

impl Counted {
    /// Counted nowhere (metrics are off).
    pub fn none() -> Self {
        Self(None)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(open) = &self.0 {
            open.dec();
        }
    }
}
