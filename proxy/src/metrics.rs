//! The proxy's Prometheus metrics, served at `/metrics` on their own port
//! (`--metrics-listen`): the registry every metric is served from, and the metrics of
//! requests, upstream attempts, circuits and config. The cache and quotas register
//! their own (`cache::CacheMetrics`, `quota::QuotaMetrics`) on the same registry.
//!
//! Names and labels follow the OpenTelemetry GenAI semantic conventions where they fit
//! (`gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`,
//! `gen_ai_client_token_usage`, labels `gen_ai_operation_name`, `gen_ai_request_model`,
//! `gen_ai_response_model`, `gen_ai_token_type`); the rest are `switchboard_*`.
//!
//! Cardinality stays bounded by the config, never by clients: routes, providers and
//! consumers are objects someone applied; `gen_ai_request_model` is the model name a
//! client asked for only once it matched a route (one of the config's names or
//! aliases), else empty; `gen_ai_response_model` is the upstream model name from the
//! AIProvider; error types and outcomes are a fixed set. Histograms carry no consumer
//! label, and the consumer label can be turned off (`--metrics-consumer-label=false`).
//!
//! Every labelled family is a `switchboard_metrics::Family<_, N>`: `with([...])` takes
//! exactly `N` values, so a wrong count does not compile instead of panicking.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use switchboard_api::Snapshot;
use switchboard_metrics::Family;

use crate::ir::record::RequestRecord;
use crate::ir::{Operation, Usage};

/// Label names.
mod label {
    pub const ROUTE: &str = "route";
    pub const PROVIDER: &str = "provider";
    pub const CONSUMER: &str = "consumer";
    pub const OPERATION: &str = "gen_ai_operation_name";
    pub const REQUEST_MODEL: &str = "gen_ai_request_model";
    pub const RESPONSE_MODEL: &str = "gen_ai_response_model";
    pub const TOKEN_TYPE: &str = "gen_ai_token_type";
    pub const STATUS_CLASS: &str = "status_class";
    pub const ERROR_TYPE: &str = "error_type";
    pub const OUTCOME: &str = "outcome";
}

/// Seconds, from a millisecond to ten minutes: a cached answer and a long generation
/// both land in a bucket that tells them apart.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Seconds per output token: a fast small model to a slow large one.
const PER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
    2.5,
];
/// Output tokens per second.
const RATE_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0,
];
/// Tokens per request, as the GenAI conventions recommend (powers of four).
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The metrics of requests, attempts, circuits and config, and the registry every
/// metric is served from.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Whether series carry the consumer (off: the label is always empty).
    consumer_label: bool,
    requests: Family<IntCounterVec, 8>,
    request_duration: Family<HistogramVec, 5>,
    time_to_first_token: Family<HistogramVec, 3>,
    time_per_output_token: Family<HistogramVec, 3>,
    output_tokens_per_second: Family<HistogramVec, 3>,
    token_usage: Family<HistogramVec, 5>,
    tokens: Family<IntCounterVec, 5>,
    cost: Family<CounterVec, 4>,
    unpriced: Family<IntCounterVec, 3>,
    attempts: Family<IntCounterVec, 3>,
    retries: Family<IntCounterVec, 1>,
    fallbacks: Family<IntCounterVec, 1>,
    circuit_state: Family<IntGaugeVec, 2>,
    in_flight: IntGauge,
    open_streams: IntGauge,
    config_info: Family<IntGaugeVec, 1>,
    config_reloads: Family<IntCounterVec, 1>,
    config_applied_at: Gauge,
}

/// Counts a request in flight until dropped.
#[derive(Debug, Default)]
pub struct InFlight(Option<Arc<Metrics>>);

/// Counts a stream open until dropped.
#[derive(Debug)]
pub struct OpenStream(Arc<Metrics>);

/// How an upstream attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome {
    Success,
    /// Failed with this error type (`ProxyError::kind`).
    Failed(&'static str),
}

/// The series of one backend of one route (route, provider, upstream model name),
/// made with the runtime for each route backend so that a request counts into them
/// without the label lookups of a family (each hashes every label value and takes
/// the family's lock). Each series is resolved the first time it is used, so a series
/// appears on `/metrics` only once something was counted in it, as with `Family::with`.
#[derive(Debug)]
pub struct BackendSeries {
    metrics: Arc<Metrics>,
    /// Label values: route, provider, upstream model name.
    labels: [Box<str>; 3],
    histograms: [OnceLock<Histogram>; 3],
    unpriced: OnceLock<IntCounter>,
    attempt_succeeded: OnceLock<IntCounter>,
    /// `gen_ai_client_token_usage` by operation (`Operation::ALL`'s order, then none)
    /// and token type (`TOKEN_TYPES`).
    token_usage: [[OnceLock<Histogram>; TOKEN_TYPES.len()]; Operation::ALL.len() + 1],
    /// Tokens and cost by consumer (empty without one, or with the consumer label
    /// off); as many as the config has consumers.
    consumers: RwLock<HashMap<Box<str>, ConsumerSeries>>,
}

/// The histograms of a backend with no label beyond the backend's.
#[derive(Debug, Clone, Copy)]
enum Backend {
    TimeToFirstToken,
    TimePerOutputToken,
    OutputTokensPerSecond,
}

/// A backend's series for one consumer.
#[derive(Debug)]
struct ConsumerSeries {
    /// `switchboard_tokens_total` by token type (`TOKEN_TYPES`).
    tokens: [IntCounter; TOKEN_TYPES.len()],
    /// Made only for a priced model: an unpriced one has no cost series, not a zero.
    cost: OnceLock<Counter>,
}

/// `gen_ai_token_type` values: input and output, then the parts of each.
const TOKEN_TYPES: [&str; 5] = [
    "input",
    "output",
    "cache_read",
    "cache_creation",
    "reasoning",
];

// === impl Metrics ===

impl Metrics {
    /// `consumer_label`: whether series carry the consumer.
    pub fn new(consumer_label: bool) -> Result<Self, prometheus::Error> {
        use label::*;
        let registry = Registry::new();
        fn counter<const N: usize>(
            name: &str,
            help: &str,
            labels: [&str; N],
        ) -> Result<Family<IntCounterVec, N>, prometheus::Error> {
            Family::new(Opts::new(name, help), labels)
        }
        fn histogram<const N: usize>(
            name: &str,
            help: &str,
            buckets: &[f64],
            labels: [&str; N],
        ) -> Result<Family<HistogramVec, N>, prometheus::Error> {
            Family::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        }
        let backend = [ROUTE, PROVIDER, RESPONSE_MODEL];
        let metrics = Self {
            consumer_label,
            requests: counter(
                "switchboard_requests_total",
                "Requests answered, by route, provider, models, operation, consumer, status class and error type.",
                [
                    ROUTE,
                    PROVIDER,
                    REQUEST_MODEL,
                    RESPONSE_MODEL,
                    OPERATION,
                    CONSUMER,
                    STATUS_CLASS,
                    ERROR_TYPE,
                ],
            )?,
            request_duration: histogram(
                "gen_ai_server_request_duration_seconds",
                "Seconds from a request's arrival to the end of its response (a stream's last event).",
                SECONDS_BUCKETS,
                [ROUTE, PROVIDER, RESPONSE_MODEL, OPERATION, STATUS_CLASS],
            )?,
            time_to_first_token: histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "Seconds from a streamed request's arrival to its first event.",
                SECONDS_BUCKETS,
                backend,
            )?,
            time_per_output_token: histogram(
                "gen_ai_server_time_per_output_token_seconds",
                "Seconds per output token after the first, for streamed answers.",
                PER_TOKEN_BUCKETS,
                backend,
            )?,
            output_tokens_per_second: histogram(
                "switchboard_output_tokens_per_second",
                "Output tokens per second of generation (after the first token, for streams).",
                RATE_BUCKETS,
                backend,
            )?,
            token_usage: histogram(
                "gen_ai_client_token_usage",
                "Tokens per request, by type: input and output (all of them), and their parts cache_read and cache_creation (of input) and reasoning (of output), when there are some.",
                TOKEN_BUCKETS,
                [ROUTE, PROVIDER, RESPONSE_MODEL, OPERATION, TOKEN_TYPE],
            )?,
            tokens: counter(
                "switchboard_tokens_total",
                "Tokens by type: input (cache reads and writes included), output (reasoning included), and their parts cache_read and cache_creation (input read from and written to the provider's prompt cache) and reasoning (output spent thinking).",
                [ROUTE, PROVIDER, RESPONSE_MODEL, CONSUMER, TOKEN_TYPE],
            )?,
            cost: Family::new(
                Opts::new(
                    "switchboard_cost_usd_total",
                    "Cost in US dollars, from the AIProvider's per-model prices.",
                ),
                [ROUTE, PROVIDER, RESPONSE_MODEL, CONSUMER],
            )?,
            unpriced: counter(
                "switchboard_unpriced_requests_total",
                "Requests that used tokens of a model without prices: their cost is unknown, not zero.",
                backend,
            )?,
            attempts: counter(
                "switchboard_upstream_attempts_total",
                "Upstream attempts by outcome: success, or the error type that ended them.",
                [PROVIDER, RESPONSE_MODEL, OUTCOME],
            )?,
            retries: counter(
                "switchboard_retries_total",
                "Upstream attempts after a request's first.",
                [ROUTE],
            )?,
            fallbacks: counter(
                "switchboard_fallbacks_total",
                "Upstream attempts on a backend other than the request's first choice.",
                [ROUTE],
            )?,
            circuit_state: Family::new(
                Opts::new(
                    "switchboard_backend_circuit_state",
                    "Circuit state per backend: 0 closed, 1 half-open (the next request probes it), 2 open (ejected).",
                ),
                [PROVIDER, RESPONSE_MODEL],
            )?,
            in_flight: IntGauge::new(
                "switchboard_requests_in_flight",
                "Requests being served (streams until their last event).",
            )?,
            open_streams: IntGauge::new(
                "switchboard_streams_open",
                "Streamed responses in progress.",
            )?,
            config_info: Family::new(
                Opts::new(
                    "switchboard_config_info",
                    "1, labelled with the config version served.",
                ),
                ["version"],
            )?,
            config_reloads: counter(
                "switchboard_config_reloads_total",
                "Configs received, by result: applied, or refused (the previous one keeps serving).",
                ["result"],
            )?,
            config_applied_at: Gauge::new(
                "switchboard_config_last_applied_timestamp_seconds",
                "Unix time the served config was applied.",
            )?,
            registry,
        };
        let build_info: Family<IntGaugeVec, 1> = Family::new(
            Opts::new(
                "switchboard_build_info",
                "1, labelled with the proxy's version.",
            ),
            ["version"],
        )?;
        build_info.with([env!("CARGO_PKG_VERSION")]).set(1);
        metrics.register(Box::new(build_info))?;
        metrics.register_all()?;
        Ok(metrics)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        self.register(Box::new(self.requests.clone()))?;
        self.register(Box::new(self.request_duration.clone()))?;
        self.register(Box::new(self.time_to_first_token.clone()))?;
        self.register(Box::new(self.time_per_output_token.clone()))?;
        self.register(Box::new(self.output_tokens_per_second.clone()))?;
        self.register(Box::new(self.token_usage.clone()))?;
        self.register(Box::new(self.tokens.clone()))?;
        self.register(Box::new(self.cost.clone()))?;
        self.register(Box::new(self.unpriced.clone()))?;
        self.register(Box::new(self.attempts.clone()))?;
        self.register(Box::new(self.retries.clone()))?;
        self.register(Box::new(self.fallbacks.clone()))?;
        self.register(Box::new(self.circuit_state.clone()))?;
        self.register(Box::new(self.in_flight.clone()))?;
        self.register(Box::new(self.open_streams.clone()))?;
        self.register(Box::new(self.config_info.clone()))?;
        self.register(Box::new(self.config_reloads.clone()))?;
        self.register(Box::new(self.config_applied_at.clone()))
    }

    fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// The registry `/metrics` serves, for other parts to register their metrics on.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A request arrived; it counts as in flight until the guard is dropped.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(Some(self.clone()))
    }

    /// A streamed response started; it counts as open until the guard is dropped.
    pub fn open_stream(self: &Arc<Self>) -> OpenStream {
        self.open_streams.inc();
        OpenStream(self.clone())
    }

    /// A request is over: counts, durations, tokens and cost (none when the answering
    /// model has no prices).
    /// `answered_by`: the series of the backend that answered, when one did.
    pub fn request(self: &Arc<Self>, log: &RequestRecord, answered_by: Option<&BackendSeries>) {
        let latency = log.latency;
        let route = log.route.as_deref().unwrap_or_default();
        let provider = log.tried.provider.as_deref().unwrap_or_default();
        // The client's model name only once it matched a route: bounded by the config.
        let request_model = match log.route {
            Some(_) => log.model.as_deref().unwrap_or_default(),
            None => "",
        };
        let response_model = log.tried.upstream_model.as_deref().unwrap_or_default();
        let operation = log.operation.map(Operation::name).unwrap_or_default();
        let consumer = match self.consumer_label {
            true => log.consumer.as_deref().unwrap_or_default(),
            false => "",
        };
        let status_class = status_class(log.status);
        self.requests
            .with([
                route,
                provider,
                request_model,
                response_model,
                operation,
                consumer,
                status_class,
                log.error.unwrap_or_default(),
            ])
            .inc();
        self.request_duration
            .with([route, provider, response_model, operation, status_class])
            .observe(latency.as_secs_f64());

        // The series of the backend that answered, resolved once per config; a request
        // that no backend answered (a cache hit) resolves them now.
        let resolved;
        let series = match answered_by {
            Some(series) => series,
            None => {
                resolved = BackendSeries::new(self.clone(), route, provider, response_model);
                &resolved
            }
        };
        let first_token = log.first_token_after();
        if let Some(first) = first_token {
            series.histogram(Backend::TimeToFirstToken, first.as_secs_f64());
        }
        let Some(usage) = log.usage else {
            return;
        };
        let output = usage.completion_tokens;
        // Generation time: after the first token for streams, the whole request otherwise.
        let generating = latency.saturating_sub(first_token.unwrap_or_default());
        if output > 0 && !generating.is_zero() {
            let rate = output as f64 / generating.as_secs_f64();
            series.histogram(Backend::OutputTokensPerSecond, rate);
        }
        if first_token.is_some() && output > 1 {
            let per_token = generating.as_secs_f64() / (output - 1) as f64;
            series.histogram(Backend::TimePerOutputToken, per_token);
        }
        let counts = token_counts(&usage);
        for (token_type, count) in counts.into_iter().enumerate() {
            // Input and output always; their parts only when there are some: a request
            // without prompt caching or reasoning would otherwise fill their lowest
            // bucket.
            if token_type < 2 || count > 0 {
                series.token_usage(log.operation, token_type, count);
            }
        }
        series.spent(consumer, counts, log.cost_usd);
    }

    /// One upstream attempt failed, with this error type (`ProxyError::kind`).
    /// (Successes count through `BackendSeries::attempt_succeeded`.)
    fn attempt_failed(&self, provider: &str, response_model: &str, kind: &str) {
        self.attempts.with([provider, response_model, kind]).inc();
    }

    /// A request made another attempt; `fallback` when on another backend than its
    /// first choice.
    pub fn retry(&self, route: &str, fallback: bool) {
        self.retries.with([route]).inc();
        if fallback {
            self.fallbacks.with([route]).inc();
        }
    }

    /// A config was applied and now serves. Series of routes, providers and consumers it
    /// no longer has are removed: a deleted object's counters would otherwise be
    /// exported, unchanging, until the proxy restarts.
    pub fn config_applied(&self, snapshot: &Snapshot) {
        self.config_info.reset();
        self.config_info.with([snapshot.version.as_str()]).set(1);
        let gone = |label: &str, value: &str| {
            !value.is_empty()
                && match label {
                    label::ROUTE => !snapshot.routes.contains_key(value),
                    label::PROVIDER => !snapshot.providers.contains_key(value),
                    label::CONSUMER => !snapshot.consumers.contains_key(value),
                    _ => false,
                }
        };
        self.requests.prune(gone);
        self.request_duration.prune(gone);
        self.time_to_first_token.prune(gone);
        self.time_per_output_token.prune(gone);
        self.output_tokens_per_second.prune(gone);
        self.token_usage.prune(gone);
        self.tokens.prune(gone);
        self.cost.prune(gone);
        self.unpriced.prune(gone);
        self.attempts.prune(gone);
        self.retries.prune(gone);
        self.fallbacks.prune(gone);
        self.config_reloads.with(["applied"]).inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_applied_at.set(now.as_secs_f64());
    }

    /// A config was refused; the previous one keeps serving.
    pub fn config_refused(&self) {
        self.config_reloads.with(["refused"]).inc();
    }

    /// Sets each backend's circuit state: (provider, upstream model name, state), the
    /// state as `switchboard_backend_circuit_state` shows it.
    pub fn circuits<'a>(&self, circuits: impl Iterator<Item = (&'a str, &'a str, CircuitState)>) {
        self.circuit_state.reset();
        for (provider, model, state) in circuits {
            self.circuit_state.with([provider, model]).set(state as i64);
        }
    }

    /// The text exposition of every metric on the registry, and the consumers of the
    /// config serving (`snapshot`).
    pub fn render(&self, snapshot: Option<&Snapshot>) -> Vec<u8> {
        let mut families = self.registry.gather();
        families.push(dropped_log_lines());
        // Without the consumer label there is nothing to join consumer labels to.
        if let Some(snapshot) = snapshot.filter(|_| self.consumer_label) {
            families.push(consumer_info(snapshot));
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric family that does not encode
        // would be a bug in this module, and an empty answer says so to the scraper.
        if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

/// `switchboard_log_lines_dropped_total`: log lines (access lines included) dropped
/// because the log pipe did not keep up (`log_output`).
fn dropped_log_lines() -> prometheus::proto::MetricFamily {
    use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};
    let mut counter = Counter::default();
    counter.set_value(crate::log_output::dropped_lines() as f64);
    let mut metric = Metric::default();
    metric.set_counter(counter);
    let mut family = MetricFamily::default();
    family.set_name("switchboard_log_lines_dropped_total".to_string());
    family.set_help(
        "Log lines dropped because stdout did not keep up (the buffer holds 8 MiB).".to_string(),
    );
    family.set_field_type(MetricType::COUNTER);
    family.mut_metric().push(metric);
    family
}

/// A backend's circuit, as `switchboard_backend_circuit_state` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    /// The next request probes it.
    HalfOpen = 1,
    /// Ejected.
    Open = 2,
}

/// `switchboard_consumer_info{consumer, label_<name>...} 1` per consumer, its
/// AIConsumer's labels as Prometheus labels (the pattern of kube-state-metrics'
/// `kube_pod_labels`), so that any consumer series can be grouped by a label with
/// `* on (consumer) group_left(label_team) switchboard_consumer_info`.
fn consumer_info(snapshot: &Snapshot) -> prometheus::proto::MetricFamily {
    use prometheus::proto::{Gauge as GaugeValue, LabelPair, Metric, MetricFamily, MetricType};
    let pair = |name: String, value: &str| {
        let mut pair = LabelPair::default();
        pair.set_name(name);
        pair.set_value(value.to_string());
        pair
    };
    let mut family = MetricFamily::default();
    family.set_name("switchboard_consumer_info".to_string());
    family.set_help(
        "1 per AIConsumer, with its labels as label_<name> (names sanitized).".to_string(),
    );
    family.set_field_type(MetricType::GAUGE);
    for (id, consumer) in &snapshot.consumers {
        let mut labels = std::collections::BTreeMap::new();
        for (name, value) in &consumer.labels {
            labels.insert(format!("label_{}", sanitize_label(name)), value.as_str());
        }
        let mut pairs = vec![pair(label::CONSUMER.to_string(), id)];
        pairs.extend(labels.into_iter().map(|(n, v)| pair(n, v)));
        let mut gauge = GaugeValue::default();
        gauge.set_value(1.0);
        let mut metric = Metric::default();
        metric.set_label(pairs);
        metric.set_gauge(gauge);
        family.mut_metric().push(metric);
    }
    family
}

/// A Kubernetes label name as a Prometheus label name: every character that is not a
/// letter, digit or underscore becomes `_`.
/// The parts of a request's input and output, by `gen_ai_token_type`, named after
/// OpenTelemetry's GenAI attributes `gen_ai.usage.cache_read.input_tokens` and
/// `gen_ai.usage.cache_creation.input_tokens` (and `reasoning`, which they do not name
/// yet). Parts, not extra tokens: each is already counted in `input` or `output`.
/// A usage's tokens in the order of `TOKEN_TYPES`.
fn token_counts(usage: &Usage) -> [u64; TOKEN_TYPES.len()] {
    [
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens(),
        usage.cache_write_tokens(),
        usage.reasoning_tokens(),
    ]
}

fn sanitize_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

// === impl BackendSeries ===

impl BackendSeries {
    /// The series of `provider`'s model `response_model` (its upstream name) when
    /// `route` sends requests there.
    pub fn new(metrics: Arc<Metrics>, route: &str, provider: &str, response_model: &str) -> Self {
        Self {
            metrics,
            labels: [route.into(), provider.into(), response_model.into()],
            histograms: Default::default(),
            unpriced: OnceLock::new(),
            attempt_succeeded: OnceLock::new(),
            token_usage: Default::default(),
            consumers: RwLock::default(),
        }
    }

    fn backend_labels(&self) -> [&str; 3] {
        let [route, provider, model] = &self.labels;
        [route, provider, model]
    }

    /// An attempt on this backend ended.
    pub fn attempt(&self, outcome: AttemptOutcome) {
        let [_, provider, model] = self.backend_labels();
        match outcome {
            AttemptOutcome::Success => self
                .attempt_succeeded
                .get_or_init(|| self.metrics.attempts.with([provider, model, "success"]))
                .inc(),
            AttemptOutcome::Failed(kind) => self.metrics.attempt_failed(provider, model, kind),
        }
    }

    fn histogram(&self, which: Backend, value: f64) {
        let metrics = &self.metrics;
        let family = match which {
            Backend::TimeToFirstToken => &metrics.time_to_first_token,
            Backend::TimePerOutputToken => &metrics.time_per_output_token,
            Backend::OutputTokensPerSecond => &metrics.output_tokens_per_second,
        };
        self.histograms[which as usize]
            .get_or_init(|| family.with(self.backend_labels()))
            .observe(value);
    }

    /// Observes `count` tokens of `TOKEN_TYPES[token_type]` for a request of `operation`.
    fn token_usage(&self, operation: Option<Operation>, token_type: usize, count: u64) {
        let row = operation.map_or(Operation::ALL.len(), |o| o as usize);
        let [route, provider, model] = self.backend_labels();
        let operation = operation.map(Operation::name).unwrap_or_default();
        self.token_usage[row][token_type]
            .get_or_init(|| {
                let labels = [route, provider, model, operation, TOKEN_TYPES[token_type]];
                self.metrics.token_usage.with(labels)
            })
            .observe(count as f64);
    }

    /// Counts what a request of `consumer` spent: its tokens (in `TOKEN_TYPES` order)
    /// and cost (`None`: the model has no prices).
    fn spent(&self, consumer: &str, tokens: [u64; TOKEN_TYPES.len()], cost_usd: Option<f64>) {
        let count = |series: &ConsumerSeries| {
            for (counter, count) in series.tokens.iter().zip(tokens) {
                counter.inc_by(count);
            }
            if let Some(cost) = cost_usd {
                series
                    .cost
                    .get_or_init(|| self.metrics.cost.with(self.consumer_labels(consumer)))
                    .inc_by(cost);
            }
        };
        // Read-locked, not across an await: the counters are atomics.
        let known = self
            .consumers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match known.get(consumer) {
            Some(series) => count(series),
            None => {
                drop(known);
                let mut all = self
                    .consumers
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                let series = all.entry(consumer.into()).or_insert_with(|| {
                    let [route, provider, model, consumer] = self.consumer_labels(consumer);
                    ConsumerSeries {
                        tokens: TOKEN_TYPES.map(|token_type| {
                            let labels = [route, provider, model, consumer, token_type];
                            self.metrics.tokens.with(labels)
                        }),
                        cost: OnceLock::new(),
                    }
                });
                count(series);
            }
        }
        if cost_usd.is_none() {
            self.unpriced
                .get_or_init(|| self.metrics.unpriced.with(self.backend_labels()))
                .inc();
        }
    }

    fn consumer_labels<'a>(&'a self, consumer: &'a str) -> [&'a str; 4] {
        let [route, provider, model] = self.backend_labels();
        [route, provider, model, consumer]
    }
}

// === impl InFlight ===

impl InFlight {
    /// A guard that counts nothing (health probes).
    pub fn none() -> Self {
        Self(None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(metrics) = &self.0 {
            metrics.in_flight.dec();
        }
    }
}

// === impl OpenStream ===

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render(None)).unwrap()
    }

    #[test]
    fn a_backends_series_are_the_familys_and_appear_once_counted_into() {
        let metrics = Arc::new(Metrics::new(true).unwrap());
        let series = BackendSeries::new(metrics.clone(), "ns/r", "ns/p", "m-up");
        assert!(
            !exposition(&metrics).contains("ns/r"),
            "nothing before a count"
        );

        series.attempt(AttemptOutcome::Success);
        series.attempt(AttemptOutcome::Success);
        series.attempt(AttemptOutcome::Failed("upstream_timeout"));
        series.spent("ns/app", [3, 4, 0, 0, 0], None);
        let attempts = |outcome| metrics.attempts.with(["ns/p", "m-up", outcome]).get();
        assert_eq!(attempts("success"), 2);
        assert_eq!(attempts("upstream_timeout"), 1);
        let tokens = |token_type| {
            let labels = ["ns/r", "ns/p", "m-up", "ns/app", token_type];
            metrics.tokens.with(labels).get()
        };
        assert_eq!((tokens("input"), tokens("output")), (3, 4));
        assert_eq!(metrics.unpriced.with(["ns/r", "ns/p", "m-up"]).get(), 1);
        assert!(
            !exposition(&metrics).contains("switchboard_cost_usd_total{"),
            "an unpriced model has no cost series"
        );

        series.spent("ns/app", [1, 1, 0, 0, 0], Some(0.5));
        series.spent("", [1, 0, 0, 0, 0], Some(0.25));
        let cost = |consumer| metrics.cost.with(["ns/r", "ns/p", "m-up", consumer]).get();
        assert_eq!((cost("ns/app"), cost("")), (0.5, 0.25));
        assert_eq!((tokens("input"), tokens("output")), (4, 5));
        assert_eq!(metrics.unpriced.with(["ns/r", "ns/p", "m-up"]).get(), 1);

        series.token_usage(Some(Operation::Embeddings), 0, 7);
        let usage = metrics
            .token_usage
            .with(["ns/r", "ns/p", "m-up", "embeddings", "input"]);
        assert_eq!((usage.get_sample_count(), usage.get_sample_sum()), (1, 7.0));
    }
}
