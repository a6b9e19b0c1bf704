//! The operator's Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Labels stay bounded: kinds, status codes, and proxy ids (one per proxy pod). Each
//! labelled family is a `switchboard_metrics::Family`: the number of label values is
//! checked when compiling.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use switchboard_metrics::Family;

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Compiles run.
    pub compiles: IntCounter,
    /// Seconds per compile.
    pub compile_duration: Histogram,
    /// Snapshots published (compiles that changed the version).
    pub publishes: IntCounter,
    /// Objects by kind and whether they are accepted.
    pub objects: Family<IntGaugeVec, 2>,
    /// Objects serving their last accepted version because the current one is broken.
    pub kept_objects: IntGauge,
    /// Watch errors by kind (the watch retries with backoff).
    pub watch_errors: Family<IntCounterVec, 1>,
    /// Status patches by result.
    pub status_patches: Family<IntCounterVec, 1>,
    /// Events published.
    pub events: IntCounter,
    /// 1 while this replica holds the Lease.
    pub leader: IntGauge,
    /// Config service requests by HTTP status.
    pub config_requests: Family<IntCounterVec, 1>,
    /// Proxies connected to this replica.
    pub connected_proxies: IntGauge,
    /// 1 per connected proxy, labelled with the version it serves.
    pub proxy_config: Family<IntGaugeVec, 2>,
    /// 1, labelled with the version this replica publishes.
    pub config_info: Family<IntGaugeVec, 1>,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let prefix = |name: &str| format!("switchboard_operator_{name}");
        let metrics = Self {
            compiles: IntCounter::new(prefix("compiles_total"), "Compiles run.")?,
            compile_duration: Histogram::with_opts(
                HistogramOpts::new(prefix("compile_duration_seconds"), "Seconds per compile.")
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
            )?,
            publishes: IntCounter::new(
                prefix("snapshots_published_total"),
                "Snapshots published: compiles that changed the config version.",
            )?,
            objects: Family::new(
                Opts::new(prefix("objects"), "Objects by kind and acceptance."),
                ["kind", "accepted"],
            )?,
            kept_objects: IntGauge::new(
                prefix("objects_kept"),
                "Objects whose current version is broken; their last accepted version serves.",
            )?,
            watch_errors: Family::new(
                Opts::new(
                    prefix("watch_errors_total"),
                    "Watch errors by kind; the watch retries.",
                ),
                ["kind"],
            )?,
            status_patches: Family::new(
                Opts::new(prefix("status_patches_total"), "Status patches by result."),
                ["result"],
            )?,
            events: IntCounter::new(prefix("events_total"), "Kubernetes Events published.")?,
            leader: IntGauge::new(prefix("leader"), "1 while this replica holds the Lease.")?,
            config_requests: Family::new(
                Opts::new(
                    prefix("config_requests_total"),
                    "Config service requests by HTTP status.",
                ),
                ["code"],
            )?,
            connected_proxies: IntGauge::new(
                prefix("connected_proxies"),
                "Proxies connected to this replica.",
            )?,
            proxy_config: Family::new(
                Opts::new(
                    prefix("proxy_config_info"),
                    "1 per proxy connected to this replica, with the config version it serves.",
                ),
                ["proxy", "version"],
            )?,
            config_info: Family::new(
                Opts::new(
                    prefix("config_info"),
                    "1, with the config version this replica publishes.",
                ),
                ["version"],
            )?,
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.compiles.clone()),
            Box::new(metrics.compile_duration.clone()),
            Box::new(metrics.publishes.clone()),
            Box::new(metrics.objects.clone()),
            Box::new(metrics.kept_objects.clone()),
            Box::new(metrics.watch_errors.clone()),
            Box::new(metrics.status_patches.clone()),
            Box::new(metrics.events.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.config_requests.clone()),
            Box::new(metrics.connected_proxies.clone()),
            Box::new(metrics.proxy_config.clone()),
            Box::new(metrics.config_info.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Refreshes the proxy gauges from the table (called before each scrape).
    pub fn set_proxies(&self, proxies: &[crate::proxies::ProxyReport]) {
        self.connected_proxies
            .set(i64::try_from(proxies.len()).unwrap_or(i64::MAX));
        self.proxy_config.reset();
        for proxy in proxies {
            self.proxy_config
                .with([proxy.id.as_str(), proxy.version.as_str()])
                .set(1);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        buffer
    }
}
