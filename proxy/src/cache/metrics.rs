//! The cache metrics: lookups by result, what hits saved, what was stored, evictions,
//! Redis errors, and the in-memory store's size. Registered on the proxy's registry
//! (`metrics`), served with every other metric.

use prometheus::{CounterVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use switchboard_api::Snapshot;
use switchboard_metrics::Family;

use crate::ir::Usage;

/// Every cache metric.
#[derive(Debug)]
pub struct CacheMetrics {
    lookups: Family<IntCounterVec, 2>,
    coalesced: Family<IntCounterVec, 1>,
    saved_tokens: Family<IntCounterVec, 2>,
    saved_cost: Family<CounterVec, 1>,
    stored: Family<IntCounterVec, 1>,
    stored_bytes: Family<IntCounterVec, 1>,
    too_large: Family<IntCounterVec, 1>,
    evictions: Family<IntCounterVec, 1>,
    store_errors: IntCounter,
    memory_entries: IntGauge,
    memory_bytes: IntGauge,
}

// === impl CacheMetrics ===

impl CacheMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn counter<const N: usize>(
            name: &str,
            help: &str,
            labels: [&str; N],
        ) -> Result<Family<IntCounterVec, N>, prometheus::Error> {
            Family::new(Opts::new(name, help), labels)
        }
        let metrics = Self {
            lookups: counter(
                "switchboard_cache_lookups_total",
                "Requests on routes with a cache, by result: hit, miss (refresh included) or bypass (asked by the client, or not cacheable).",
                ["route", "result"],
            )?,
            coalesced: counter(
                "switchboard_cache_coalesced_total",
                "Hits that were the answer of an identical request in flight (waited for, not sent upstream).",
                ["route"],
            )?,
            saved_tokens: counter(
                "switchboard_cache_saved_tokens_total",
                "Tokens that cache hits did not spend upstream (input, output), as the stored answer used them.",
                ["route", "gen_ai_token_type"],
            )?,
            saved_cost: Family::new(
                Opts::new(
                    "switchboard_cache_saved_cost_usd_total",
                    "USD that cache hits did not spend, priced when the answer was stored.",
                ),
                ["route"],
            )?,
            stored: counter(
                "switchboard_cache_stored_total",
                "Answers stored in the cache.",
                ["route"],
            )?,
            stored_bytes: counter(
                "switchboard_cache_stored_bytes_total",
                "Bytes of answers stored in the cache (uncompressed JSON).",
                ["route"],
            )?,
            too_large: counter(
                "switchboard_cache_too_large_total",
                "Answers not stored because they were larger than the route's maxEntryBytes.",
                ["route"],
            )?,
            evictions: counter(
                "switchboard_cache_evictions_total",
                "Entries removed from the in-memory cache, by cause: size (to make room) or expired.",
                ["cause"],
            )?,
            store_errors: IntCounter::new(
                "switchboard_cache_store_errors_total",
                "Failed or skipped cache operations on Redis; lookups became misses.",
            )?,
            memory_entries: IntGauge::new(
                "switchboard_cache_memory_entries",
                "Entries in the in-memory cache (0 when the cache is in Redis).",
            )?,
            memory_bytes: IntGauge::new(
                "switchboard_cache_memory_bytes",
                "Bytes the in-memory cache holds, as it weighs entries (0 when the cache is in Redis).",
            )?,
        };
        // Fixed label sets start at 0, so that rate() sees their first increase.
        for cause in ["size", "expired"] {
            metrics.evictions.with([cause]);
        }
        registry.register(Box::new(metrics.lookups.clone()))?;
        registry.register(Box::new(metrics.coalesced.clone()))?;
        registry.register(Box::new(metrics.saved_tokens.clone()))?;
        registry.register(Box::new(metrics.saved_cost.clone()))?;
        registry.register(Box::new(metrics.stored.clone()))?;
        registry.register(Box::new(metrics.stored_bytes.clone()))?;
        registry.register(Box::new(metrics.too_large.clone()))?;
        registry.register(Box::new(metrics.evictions.clone()))?;
        registry.register(Box::new(metrics.store_errors.clone()))?;
        registry.register(Box::new(metrics.memory_entries.clone()))?;
        registry.register(Box::new(metrics.memory_bytes.clone()))?;
        Ok(metrics)
    }

    /// A request on a route with a cache: `hit`, `miss` or `bypass`.
    pub fn lookup(&self, route: &str, result: &str, coalesced: bool) {
        self.lookups.with([route, result]).inc();
        if coalesced {
            self.coalesced.with([route]).inc();
        }
    }

    /// What a hit saved: the stored answer's usage and cost.
    pub fn saved(&self, route: &str, usage: &Usage, cost_usd: Option<f64>) {
        for (token_type, count) in [
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
        ] {
            self.saved_tokens.with([route, token_type]).inc_by(count);
        }
        if let Some(cost) = cost_usd {
            self.saved_cost.with([route]).inc_by(cost);
        }
    }

    pub fn stored(&self, route: &str, bytes: usize) {
        self.stored.with([route]).inc();
        self.stored_bytes.with([route]).inc_by(bytes as u64);
    }

    pub fn too_large(&self, route: &str) {
        self.too_large.with([route]).inc();
    }

    pub fn evicted(&self, cause: &str) {
        self.evictions.with([cause]).inc();
    }

    /// A config was applied: series of routes it no longer has are removed, as the
    /// proxy's own metrics do (`Metrics::config_applied`).
    pub fn config_applied(&self, snapshot: &Snapshot) {
        let gone = |label: &str, route: &str| {
            label == "route" && !route.is_empty() && !snapshot.routes.contains_key(route)
        };
        self.lookups.prune(gone);
        self.coalesced.prune(gone);
        self.saved_tokens.prune(gone);
        self.saved_cost.prune(gone);
        self.stored.prune(gone);
        self.stored_bytes.prune(gone);
        self.too_large.prune(gone);
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// The in-memory cache's entries and bytes, if the cache is in memory.
    pub fn memory(&self, usage: Option<(u64, u64)>) {
        let (entries, bytes) = usage.unwrap_or_default();
        self.memory_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.memory_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
