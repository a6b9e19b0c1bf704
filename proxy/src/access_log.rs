//! The access line: one log line per request, written from its `RequestRecord` when the
//! request is over (see `finish`): at the response for whole responses, at the stream's
//! end for streams.
//!
//! In JSON mode the line is serialized straight to stdout in the same shape as the
//! other (tracing) log lines. Going through tracing's JSON formatter cost a fifth of
//! the proxy's CPU per request (bench/README.md); the access line is the one log line
//! every request writes, so it gets its own writer. In text mode it goes through
//! tracing, for humans.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::ir::record::{CacheResult, LoggedBody, RequestRecord};
use crate::ir::stream::StreamOutcome;
use crate::log_output;
use crate::settings::LogFormat;

/// The tracing target of access lines; `RUST_LOG=switchboard::access=off` silences them.
pub const TARGET: &str = "switchboard::access";

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
    cache_write_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_write_1h_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u64>,
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

/// Writes the access line of a finished request in `format`.
pub fn write(format: LogFormat, record: &RequestRecord) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let line = Line(record);
    match format {
        LogFormat::Json => line.write_json(),
        LogFormat::Text => line.trace(),
    }
}

/// A record, as its access line.
struct Line<'a>(&'a RequestRecord);

impl Line<'_> {
    fn latency_ms(&self) -> f64 {
        self.0.latency.as_secs_f64() * 1000.0
    }

    fn write_json(&self) {
        if let Some(line) = self.json() {
            // One whole line, queued: a slow log pipe costs lines, not requests.
            log_output::write_line(&line);
        }
    }

    /// The JSON line, newline included.
    fn json(&self) -> Option<Vec<u8>> {
        let record = self.0;
        let line = JsonLine {
            timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            level: "INFO",
            message: "request",
            target: TARGET,
            request_id: &record.request_id,
            method: record.method.as_str(),
            path: record.uri.path(),
            status: record.status,
            consumer: record.consumer.as_deref(),
            consumer_labels: record.consumer_labels.as_ref(),
            route: record.route.as_deref(),
            provider: record.tried.provider.as_deref(),
            model: record.model.as_deref(),
            upstream_model: record.tried.upstream_model.as_deref(),
            attempts: record.tried.attempts,
            stream: record.stream,
            stream_outcome: record.stream_outcome.map(StreamOutcome::as_str),
            error: record.error,
            latency_ms: self.latency_ms(),
            headers_ms: record.headers_after.map(|d| d.as_secs_f64() * 1000.0),
            ttft_ms: record.first_token_after().map(|d| d.as_secs_f64() * 1000.0),
            input_tokens: record.usage.map(|u| u.prompt_tokens),
            output_tokens: record.usage.map(|u| u.completion_tokens),
            cached_tokens: record.usage.map(|u| u.cached_tokens()),
            cache_write_tokens: record.usage.map(|u| u.cache_write_tokens()),
            cache_write_1h_tokens: record.usage.map(|u| u.cache_write_1h_tokens()),
            reasoning_tokens: record.usage.map(|u| u.reasoning_tokens()),
            cost_usd: record.cost_usd,
            unpriced: record.unpriced(),
            quota_fallback: record.quota_fallback.as_deref(),
            cache: record.cache.map(CacheResult::as_str),
            cache_saved_usd: record.cache_saved_usd,
            request_body: record.request_body.as_ref().map(LoggedBody::text),
            request_body_truncated: record.request_body.as_ref().is_some_and(|b| b.truncated),
            response_body: record.response_body.as_ref().map(LoggedBody::text),
            response_body_truncated: record.response_body.as_ref().is_some_and(|b| b.truncated),
        };
        let mut buf = Vec::with_capacity(512);
        serde_json::to_writer(&mut buf, &line).ok()?;
        buf.push(b'\n');
        Some(buf)
    }

    fn trace(&self) {
        let record = self.0;
        let usage = record.usage.unwrap_or_default();
        tracing::info!(
            target: TARGET,
            request_id = %record.request_id,
            method = %record.method,
            path = %record.uri.path(),
            status = record.status,
            consumer = record.consumer.as_deref(),
            route = record.route.as_deref(),
            provider = record.tried.provider.as_deref(),
            model = record.model.as_deref(),
            upstream_model = record.tried.upstream_model.as_deref(),
            attempts = record.tried.attempts,
            stream = record.stream,
            stream_outcome = record.stream_outcome.map(StreamOutcome::as_str),
            error = record.error,
            latency_ms = self.latency_ms(),
            headers_ms = record.headers_after.map(|d| d.as_secs_f64() * 1000.0),
            ttft_ms = record.first_token_after().map(|d| d.as_secs_f64() * 1000.0),
            input_tokens = record.usage.map(|_| usage.prompt_tokens),
            output_tokens = record.usage.map(|_| usage.completion_tokens),
            cached_tokens = record.usage.map(|_| usage.cached_tokens()),
            cache_write_tokens = record.usage.map(|_| usage.cache_write_tokens()),
            cache_write_1h_tokens = record.usage.map(|_| usage.cache_write_1h_tokens()),
            reasoning_tokens = record.usage.map(|_| usage.reasoning_tokens()),
            cost_usd = record.cost_usd,
            unpriced = record.unpriced().then_some(true),
            quota_fallback = record.quota_fallback.as_deref(),
            cache = record.cache.map(CacheResult::as_str),
            cache_saved_usd = record.cache_saved_usd,
            consumer_labels = record.consumer_labels.as_ref().map(|l| format!("{l:?}")),
            request_body = record.request_body.as_ref().map(LoggedBody::text).as_deref(),
            request_body_truncated = record.request_body.as_ref().and_then(|b| b.truncated.then_some(true)),
            response_body = record.response_body.as_ref().map(LoggedBody::text).as_deref(),
            response_body_truncated = record.response_body.as_ref().and_then(|b| b.truncated.then_some(true)),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use switchboard_api::snapshot::Pricing;

    use super::*;
    use crate::ir::Usage;

    /// Each kind of token has its own count on the line, and the cost prices each at
    /// its rate.
    #[test]
    fn the_line_shows_each_token_count_and_the_cost() {
        let mut record = RequestRecord::new(
            "r1".into(),
            http::Method::POST,
            "/v1/messages".parse().unwrap(),
        );
        let sonnet = Pricing {
            input_per_million: 3.0,
            output_per_million: 15.0,
            cached_input_per_million: 0.30,
            cache_write_per_million: Some(3.75),
            cache_write_1h_per_million: Some(6.0),
        };
        record.tried.attempt("up", "claude", Some(sonnet));
        // Anthropic's input_tokens 100, cache writes 2,000 (500 of them kept an hour),
        // cache reads 10,000, output 500 of which (say) 200 thinking: $0.0183 (see
        // snapshot.rs) and 500 * (6 - 3.75) per million more for the 1-hour writes.
        record.usage = Some(
            Usage::new(12_100, 500, 10_000)
                .with_cache_writes(2_000)
                .with_cache_writes_1h(500)
                .with_reasoning(200),
        );
        record.cost_usd = record.price();
        let line = Line(&record).json().unwrap();
        let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(line["input_tokens"], 12_100);
        assert_eq!(line["cached_tokens"], 10_000);
        assert_eq!(line["cache_write_tokens"], 2_000);
        assert_eq!(line["cache_write_1h_tokens"], 500);
        assert_eq!(line["output_tokens"], 500);
        assert_eq!(line["reasoning_tokens"], 200);
        let cost = line["cost_usd"].as_f64().unwrap();
        assert!((cost - 0.019_425).abs() < 1e-12, "{cost}");
    }
}
