//! The access line: one log line per request, written when the request is over (see
//! `finish`): at the response for whole responses, at the stream's end for streams.
//!
//! In JSON mode the line is serialized straight to stdout in the same shape as the
//! other (tracing) log lines. Going through tracing's JSON formatter cost a fifth of
//! the proxy's CPU per request (bench/README.md); the access line is the one log line
//! every request writes, so it gets its own writer. In text mode it goes through
//! tracing, for humans.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use switchboard_api::snapshot::Pricing;

use crate::cache::CacheResult;
use crate::ir::{Operation, Usage};
use crate::metrics::{InFlight, OpenStream};
use crate::providers::StreamOutcome;
use crate::quota::{RateLimits, Reservation};
use crate::settings::LogFormat;

/// The tracing target of access lines; `RUST_LOG=switchboard::access=off` silences them.
pub const TARGET: &str = "switchboard::access";

/// What is known about a request, filled in as it moves through the pipeline. It
/// lives exactly as long as the request: it counts it in flight (and its stream open)
/// until it is finished or dropped.
#[derive(Debug, Default)]
pub struct RequestLog {
    pub format: LogFormat,
    pub request_id: String,
    pub method: http::Method,
    pub uri: http::Uri,
    pub consumer: Option<String>,
    pub route: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub operation: Option<Operation>,
    /// Prices of the model that answered (or was tried last); `None`: unpriced.
    pub pricing: Option<Pricing>,
    /// Upstream attempts made (0 when none was: an error before routing).
    pub attempts: u32,
    pub status: u16,
    pub error: Option<&'static str>,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub stream_outcome: Option<StreamOutcome>,
    /// Time to response headers; for a stream, that is its first event.
    pub headers_after: Option<Duration>,
    /// With body logging: the start of the request body.
    pub request_body: Option<LoggedBody>,
    /// With body logging: the start of the response body as sent.
    pub response_body: Option<LoggedBody>,
    pub in_flight: InFlight,
    pub open_stream: Option<OpenStream>,
    /// The consumer's labels (its AIConsumer's), for grouping in log queries.
    pub consumer_labels: Option<BTreeMap<String, String>>,
    /// What the request holds on its quotas until it is settled.
    pub reservation: Option<Reservation>,
    /// Rate-limit headers for the response.
    pub rate_limits: Option<RateLimits>,
    /// The quota whose limit sent the request to its fallback route.
    pub quota_fallback: Option<String>,
    /// On a route with a cache: what the cache did.
    pub cache: Option<CacheResult>,
    /// On a cache hit: what the stored answer had cost (what the hit saved).
    pub cache_saved_usd: Option<f64>,
}

/// The first bytes of a body, as logged.
#[derive(Debug, Clone)]
pub struct LoggedBody {
    pub bytes: Bytes,
    /// Whether the body went on past `bytes`.
    pub truncated: bool,
}

/// An access line as JSON; field names match the tracing JSON lines around it.
#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    level: &'static str,
    message: &'static str,
    target: &'static str,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_labels: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_model: Option<&'a str>,
    attempts: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    /// Present (true) when tokens were used on a model without prices.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unpriced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_fallback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_saved_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    request_body_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    response_body_truncated: bool,
}

// === impl RequestLog ===

impl RequestLog {
    pub fn new(
        format: LogFormat,
        request_id: String,
        method: http::Method,
        uri: http::Uri,
        in_flight: InFlight,
    ) -> Self {
        Self {
            format,
            request_id,
            method,
            uri,
            consumer: None,
            route: None,
            provider: None,
            model: None,
            upstream_model: None,
            operation: None,
            pricing: None,
            attempts: 0,
            status: 0,
            error: None,
            stream: false,
            usage: None,
            stream_outcome: None,
            headers_after: None,
            request_body: None,
            response_body: None,
            in_flight,
            open_stream: None,
            consumer_labels: None,
            reservation: None,
            rate_limits: None,
            quota_fallback: None,
            cache: None,
            cache_saved_usd: None,
        }
    }

    /// Holds a quota reservation until the request is settled.
    pub fn hold(&mut self, reservation: Reservation) {
        self.rate_limits = Some(reservation.rate_limits.clone());
        self.reservation = Some(reservation);
    }

    /// Time to the first event of a stream that was answered.
    pub fn first_token_after(&self) -> Option<Duration> {
        match self.stream && self.status == 200 {
            true => self.headers_after,
            false => None,
        }
    }

    /// What the request cost: `None` when no tokens are known or the model has no
    /// prices (see `unpriced`).
    pub fn cost_usd(&self) -> Option<f64> {
        let usage = self.usage?;
        let pricing = self.pricing?;
        Some(pricing.cost_usd(
            usage.prompt_tokens,
            usage.cached_tokens(),
            usage.completion_tokens,
        ))
    }

    /// Tokens were used on a model without prices: its cost is unknown, not zero.
    pub fn unpriced(&self) -> bool {
        self.usage.is_some() && self.pricing.is_none()
    }

    /// Writes the access line for a request that took `latency`.
    pub fn emit(&self, latency: Duration, cost_usd: Option<f64>) {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let latency_ms = latency.as_secs_f64() * 1000.0;
        match self.format {
            LogFormat::Json => self.write_json(latency_ms, cost_usd),
            LogFormat::Text => self.trace(latency_ms, cost_usd),
        }
    }

    fn write_json(&self, latency_ms: f64, cost_usd: Option<f64>) {
        let line = JsonLine {
            timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            level: "INFO",
            message: "request",
            target: TARGET,
            request_id: &self.request_id,
            method: self.method.as_str(),
            path: self.uri.path(),
            status: self.status,
            consumer: self.consumer.as_deref(),
            consumer_labels: self.consumer_labels.as_ref(),
            route: self.route.as_deref(),
            provider: self.provider.as_deref(),
            model: self.model.as_deref(),
            upstream_model: self.upstream_model.as_deref(),
            attempts: self.attempts,
            stream: self.stream,
            stream_outcome: self.stream_outcome.map(StreamOutcome::as_str),
            error: self.error,
            latency_ms,
            headers_ms: self.headers_after.map(|d| d.as_secs_f64() * 1000.0),
            ttft_ms: self.first_token_after().map(|d| d.as_secs_f64() * 1000.0),
            input_tokens: self.usage.map(|u| u.prompt_tokens),
            output_tokens: self.usage.map(|u| u.completion_tokens),
            cached_tokens: self.usage.map(|u| u.cached_tokens()),
            cost_usd,
            unpriced: self.unpriced(),
            quota_fallback: self.quota_fallback.as_deref(),
            cache: self.cache.map(CacheResult::as_str),
            cache_saved_usd: self.cache_saved_usd,
            request_body: self.request_body.as_ref().map(LoggedBody::text),
            request_body_truncated: self.request_body.as_ref().is_some_and(|b| b.truncated),
            response_body: self.response_body.as_ref().map(LoggedBody::text),
            response_body_truncated: self.response_body.as_ref().is_some_and(|b| b.truncated),
        };
        let mut buf = Vec::with_capacity(512);
        if serde_json::to_writer(&mut buf, &line).is_ok() {
            buf.push(b'\n');
            // One write of a whole line: lines from other threads never interleave.
            let _ = std::io::stdout().lock().write_all(&buf);
        }
    }

    fn trace(&self, latency_ms: f64, cost_usd: Option<f64>) {
        let usage = self.usage.unwrap_or_default();
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            method = %self.method,
            path = %self.uri.path(),
            status = self.status,
            consumer = self.consumer.as_deref(),
            route = self.route.as_deref(),
            provider = self.provider.as_deref(),
            model = self.model.as_deref(),
            upstream_model = self.upstream_model.as_deref(),
            attempts = self.attempts,
            stream = self.stream,
            stream_outcome = self.stream_outcome.map(StreamOutcome::as_str),
            error = self.error,
            latency_ms,
            headers_ms = self.headers_after.map(|d| d.as_secs_f64() * 1000.0),
            ttft_ms = self.first_token_after().map(|d| d.as_secs_f64() * 1000.0),
            input_tokens = self.usage.map(|_| usage.prompt_tokens),
            output_tokens = self.usage.map(|_| usage.completion_tokens),
            cached_tokens = self.usage.map(|_| usage.cached_tokens()),
            cost_usd,
            unpriced = self.unpriced().then_some(true),
            quota_fallback = self.quota_fallback.as_deref(),
            cache = self.cache.map(CacheResult::as_str),
            cache_saved_usd = self.cache_saved_usd,
            consumer_labels = self.consumer_labels.as_ref().map(|l| format!("{l:?}")),
            request_body = self.request_body.as_ref().map(LoggedBody::text).as_deref(),
            request_body_truncated = self.request_body.as_ref().and_then(|b| b.truncated.then_some(true)),
            response_body = self.response_body.as_ref().map(LoggedBody::text).as_deref(),
            response_body_truncated = self.response_body.as_ref().and_then(|b| b.truncated.then_some(true)),
            "request"
        );
    }
}

// === impl LoggedBody ===

impl LoggedBody {
    /// A copy of the first `limit` bytes of `body` (a copy, so that a large body is
    /// not kept alive for the length of a stream by its logged start).
    pub fn capture(body: &[u8], limit: usize) -> Self {
        Self {
            bytes: Bytes::copy_from_slice(&body[..body.len().min(limit)]),
            truncated: body.len() > limit,
        }
    }

    /// The bytes as text; a multi-byte character cut at the limit shows as U+FFFD.
    fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}
