//! Logs and traces.
//!
//! Logs: text or JSON lines on stdout, levels from `RUST_LOG`. Traces: when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, a span
//! per request (kind server) and one per upstream attempt (kind client) with the
//! OpenTelemetry GenAI attributes, exported over OTLP/HTTP by the OpenTelemetry SDK,
//! which reads the other `OTEL_*` variables itself (sampler, headers, timeout, service
//! name, resource attributes). A client's W3C `traceparent` makes its request span a
//! child of the client's; each attempt sends its own `traceparent` upstream. Without
//! export, the client's `traceparent` and `tracestate` are forwarded upstream as they
//! came, so the provider still joins the client's trace.
//!
//! With export off no span is created at all: requests pay nothing for tracing.

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::ir::TraceHeaders;
use crate::ir::record::RequestRecord;
use crate::log_output;
use crate::settings::LogFormat;

/// The tracing target of the request and attempt spans (exported, never logged).
pub const TARGET: &str = "switchboard::trace";

/// Whether spans are exported; read on every request, set once at start.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Flushes exported spans on shutdown.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Flushes the queued log lines when dropped (`log_output`).
    _logs: Option<log_output::FlushGuard>,
}

/// Sets up logging, and trace export when the environment asks for it. Returns a
/// problem with the trace exporter as a message to log (logging works either way).
pub fn init(format: LogFormat) -> (Telemetry, Option<String>) {
    let (provider, problem) = match exporter_configured() {
        true => match tracer_provider() {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(format!("traces are not exported: {error}"))),
        },
        false => (None, None),
    };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans of this target are for export; they would only clutter log lines.
    if let Ok(directive) = format!("{TARGET}=off").parse() {
        filter = filter.add_directive(directive);
    }
    // Log lines go through a bounded buffer to stdout, never blocking a request.
    let guard = log_output::install();
    let writer = || log_output::Stdout;
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
        // Colours only for a terminal: escape codes in a log file or pipeline are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_writer(writer)
            .boxed(),
    }
    .with_filter(filter);
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("switchboard-proxy"))
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    (
        Telemetry {
            provider,
            _logs: guard,
        },
        problem,
    )
}

/// `OTEL_SDK_DISABLED` and `OTEL_TRACES_EXPORTER=none` turn export off; an OTLP
/// endpoint turns it on.
fn exporter_configured() -> bool {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled
}

fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The exporter's HTTP client (reqwest, rustls) needs the process's crypto provider.
    crate::tls::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("switchboard-proxy");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Whether request and attempt spans are being made.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

// === impl Telemetry ===

impl Telemetry {
    /// Sends the spans still buffered (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "could not flush the last traces");
        }
    }
}

// === spans ===

/// A request's span, a child of the client's `traceparent` when it sent one; the
/// empty span when not exporting.
pub fn request_span(method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format_args!("{method} {path}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        gen_ai.operation.name = tracing::field::Empty,
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.usage.cache_read.input_tokens = tracing::field::Empty,
        gen_ai.usage.cache_creation.input_tokens = tracing::field::Empty,
        switchboard.request_id = tracing::field::Empty,
        switchboard.route = tracing::field::Empty,
        switchboard.consumer = tracing::field::Empty,
        switchboard.provider = tracing::field::Empty,
        switchboard.attempts = tracing::field::Empty,
        switchboard.cost_usd = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // A client without a (valid) traceparent starts a trace; nothing to report.
    let _ = span.set_parent(parent);
    span
}

/// Records what the request's end knows on its span.
pub fn record_request(span: &Span, log: &RequestRecord) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", log.status);
    span.record("switchboard.request_id", log.request_id.as_str());
    span.record("switchboard.attempts", log.tried.attempts);
    if let Some(error) = log.error {
        span.record("error.type", error);
    }
    if log.status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let fields = [
        ("switchboard.route", &log.route),
        ("switchboard.consumer", &log.consumer),
        ("switchboard.provider", &log.tried.provider),
        ("gen_ai.request.model", &log.model),
        ("gen_ai.response.model", &log.tried.upstream_model),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            span.record(name, value.as_str());
        }
    }
    if let Some(operation) = log.operation {
        span.record("gen_ai.operation.name", operation.name());
    }
    if let Some(usage) = log.usage {
        span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
        span.record(
            "gen_ai.usage.cache_read.input_tokens",
            usage.cached_tokens(),
        );
        span.record(
            "gen_ai.usage.cache_creation.input_tokens",
            usage.cache_write_tokens(),
        );
    }
    if let Some(cost) = log.cost_usd {
        span.record("switchboard.cost_usd", cost);
    }
}

/// An upstream attempt's span, a child of the current (request) span; the empty span
/// when not exporting.
pub fn attempt_span(
    operation: &str,
    provider_type: &str,
    provider: &str,
    upstream_model: &str,
    attempt: u32,
) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "attempt",
        otel.name = %format_args!("{operation} {upstream_model}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = operation,
        gen_ai.provider.name = provider_type,
        gen_ai.request.model = upstream_model,
        "error.type" = tracing::field::Empty,
        switchboard.provider = provider,
        switchboard.attempt = attempt,
    )
}

/// Marks an attempt's span as failed with `error_type`.
pub fn attempt_failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// The trace headers an attempt sends upstream: its own span's context when
/// exporting, otherwise the client's as they came.
pub fn upstream_headers(attempt: &Span, client: &TraceHeaders) -> TraceHeaders {
    if attempt.is_disabled() {
        return client.clone();
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new()
        .inject_context(&attempt.context(), &mut HeaderInjector(&mut headers));
    TraceHeaders {
        traceparent: headers.remove("traceparent"),
        tracestate: headers
            .remove("tracestate")
            .filter(|v: &HeaderValue| !v.is_empty()),
    }
}
