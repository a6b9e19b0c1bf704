//! The quota metrics: usage against limits, refusals, budget fallbacks, and the health
//! of the shared counter store. Registered on the proxy's registry (`metrics`), served
//! with every other metric.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use switchboard_api::Snapshot;
use switchboard_metrics::Family;

/// Every quota metric.
#[derive(Debug)]
pub struct QuotaMetrics {
    /// Whether series carry the consumer (off: the label is always empty).
    consumer_label: bool,
    used: Family<GaugeVec, 3>,
    limit: Family<GaugeVec, 2>,
    rejections: Family<IntCounterVec, 2>,
    fallbacks: Family<IntCounterVec, 1>,
    store_errors: IntCounter,
    store_up: IntGauge,
}

// === impl QuotaMetrics ===

impl QuotaMetrics {
    /// Registers the quota metrics on `registry`; `switchboard_quota_store_up` only
    /// when the counters are shared in Redis (`shared_store`).
    pub fn register(
        registry: &Registry,
        consumer_label: bool,
        shared_store: bool,
    ) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            consumer_label,
            used: Family::new(
                Opts::new(
                    "switchboard_quota_used",
                    "Used in the current window of a quota limit, as of this proxy's last admission on it (requests, tokens, or USD); consumer empty for shared quotas.",
                ),
                ["quota", "limit", "consumer"],
            )?,
            limit: Family::new(
                Opts::new(
                    "switchboard_quota_limit",
                    "The maximum of a quota limit per window.",
                ),
                ["quota", "limit"],
            )?,
            rejections: Family::new(
                Opts::new(
                    "switchboard_quota_rejections_total",
                    "Requests refused by a quota limit (429).",
                ),
                ["quota", "limit"],
            )?,
            fallbacks: Family::new(
                Opts::new(
                    "switchboard_quota_fallbacks_total",
                    "Requests sent to a quota's fallback route instead of being refused.",
                ),
                ["quota"],
            )?,
            store_errors: IntCounter::new(
                "switchboard_quota_store_errors_total",
                "Failed or skipped operations on the shared quota store (Redis); each quota's failurePolicy applied.",
            )?,
            store_up: IntGauge::new(
                "switchboard_quota_store_up",
                "1 while the shared quota store (Redis) answers, 0 while it does not; absent without one.",
            )?,
        };
        registry.register(Box::new(metrics.used.clone()))?;
        registry.register(Box::new(metrics.limit.clone()))?;
        registry.register(Box::new(metrics.rejections.clone()))?;
        registry.register(Box::new(metrics.fallbacks.clone()))?;
        registry.register(Box::new(metrics.store_errors.clone()))?;
        if shared_store {
            registry.register(Box::new(metrics.store_up.clone()))?;
        }
        Ok(metrics)
    }

    /// What a quota limit's counter stood at after an admission.
    pub fn used(&self, quota: &str, limit: &str, consumer: &str, used: f64) {
        let consumer = if self.consumer_label { consumer } else { "" };
        self.used.with([quota, limit, consumer]).set(used);
    }

    pub fn rejected(&self, quota: &str, limit: &str) {
        self.rejections.with([quota, limit]).inc();
    }

    pub fn fallback(&self, quota: &str) {
        self.fallbacks.with([quota]).inc();
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
        self.store_up.set(0);
    }

    /// The shared store answered (or, `false`, did not).
    pub fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// A config was applied: the limits it serves, and series of quotas and consumers
    /// it no longer has removed, as the proxy's own metrics do
    /// (`Metrics::config_applied`).
    pub fn config_applied(&self, snapshot: &Snapshot) {
        self.limit.reset();
        for (id, quota) in &snapshot.quotas {
            for limit in &quota.limits {
                self.limit
                    .with([id.as_str(), switchboard_api::quota::limit_name(limit)])
                    .set(limit.max);
            }
        }
        let gone = |label: &str, value: &str| {
            !value.is_empty()
                && match label {
                    "quota" => !snapshot.quotas.contains_key(value),
                    "consumer" => !snapshot.consumers.contains_key(value),
                    _ => false,
                }
        };
        self.used.prune(gone);
        self.rejections.prune(gone);
        self.fallbacks.prune(gone);
    }
}
