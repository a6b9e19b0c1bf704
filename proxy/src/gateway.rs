//! The state every request shares: the runtime it serves from, the static settings,
//! and the proxy-wide parts (metrics, quota counters, cache).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::quota::Quotas;
use crate::runtime::{Runtime, RuntimeHandle};
use crate::settings::Settings;

/// State shared by every request.
#[derive(Debug)]
pub struct Gateway {
    pub runtime: RuntimeHandle,
    pub settings: Settings,
    /// `None` with `--metrics-listen off`.
    pub metrics: Option<Arc<Metrics>>,
    pub quotas: Arc<Quotas>,
    pub cache: Arc<Cache>,
    /// Set once shutdown begins; `/readyz` then fails.
    pub draining: AtomicBool,
}

// === impl Gateway ===

impl Gateway {
    pub fn new(
        settings: Settings,
        metrics: Option<Arc<Metrics>>,
        quotas: Arc<Quotas>,
        cache: Arc<Cache>,
    ) -> Self {
        Self {
            runtime: RuntimeHandle::default(),
            settings,
            metrics,
            quotas,
            cache,
            draining: AtomicBool::new(false),
        }
    }

    /// Serves `runtime` from now on; in-flight requests finish on the one they began with.
    pub fn install(&self, runtime: Runtime) {
        if let Some(metrics) = &self.metrics {
            metrics.config_applied(&runtime.snapshot);
        }
        self.quotas.config_applied(&runtime.snapshot);
        self.cache.config_applied(&runtime.snapshot);
        self.runtime.swap(runtime);
    }

    /// A new config was refused; the current one keeps serving.
    pub fn refused(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.config_refused();
        }
    }
}
