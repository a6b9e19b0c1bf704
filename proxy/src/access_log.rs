//! The access line: one log line per request, written from its `RequestRecord` when the
//! request is over (see `finish`): at the response for whole responses, at the stream's
//! end for streams.
//!
//! In JSON mode the line is serialized straight to stdout in the same shape as the
//! other (tracing) log lines. Going through tracing's JSON formatter cost a fifth of
//! the proxy's CPU per request (bench/README.md); the access line is the one log line
//! every request writes, so it gets its own writer. In text mode it goes through
//! tracing, for humans.

use std::io::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::ir::record::{CacheResult, LoggedBody, RequestRecord};
use crate::ir::stream::StreamOutcome;
use crate::log_output;
use crate::settings::LogFormat;

/// The tracing target of access lines; `RUST_LOG=switchboard::access=off` silences them.
pub const TARGET: &str = "switchboard::access";

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

    /// The JSON line, newline included; field names match the tracing JSON lines
    /// around it, and fields without a value are left out.
    ///
    /// Written field by field rather than through a derived `Serialize`: serde_json
    /// escapes every field name byte by byte, and with the values that was about 40%
    /// of the line's cost (callgrind). Names here are constants; values are escaped
    /// only when they need it, by serde_json, so the output is the same.
    fn json(&self) -> Option<Vec<u8>> {
        let record = self.0;
        let mut out = JsonObject(Vec::with_capacity(512));
        let timestamp = humantime::format_rfc3339_micros(SystemTime::now());
        // Digits, `-`, `:`, `.`, `T` and `Z`: nothing to escape.
        write!(out.0, "{{\"timestamp\":\"{timestamp}\"").ok()?;
        out.str("level", "INFO");
        out.str("message", "request");
        out.str("target", TARGET);
        out.str("request_id", &record.request_id);
        out.str("method", record.method.as_str());
        out.str("path", record.uri.path());
        out.number("status", record.status);
        out.opt_str("consumer", record.consumer.as_deref());
        if let Some(labels) = &record.consumer_labels {
            out.key("consumer_labels");
            out.0.push(b'{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.0.push(b',');
                }
                out.string(name);
                out.0.push(b':');
                out.string(value);
            }
            out.0.push(b'}');
        }
        out.opt_str("route", record.route.as_deref());
        out.opt_str("provider", record.tried.provider.as_deref());
        out.opt_str("model", record.model.as_deref());
        out.opt_str("upstream_model", record.tried.upstream_model.as_deref());
        out.number("attempts", record.tried.attempts);
        out.number("stream", record.stream);
        out.opt_str(
            "stream_outcome",
            record.stream_outcome.map(StreamOutcome::as_str),
        );
        out.opt_str("error", record.error);
        out.number("latency_ms", self.latency_ms());
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        out.opt_number("headers_ms", record.headers_after.map(ms));
        out.opt_number("ttft_ms", record.first_token_after().map(ms));
        if let Some(usage) = record.usage {
            out.number("input_tokens", usage.prompt_tokens);
            out.number("output_tokens", usage.completion_tokens);
            out.number("cached_tokens", usage.cached_tokens());
            out.number("cache_write_tokens", usage.cache_write_tokens());
            out.number("cache_write_1h_tokens", usage.cache_write_1h_tokens());
            out.number("reasoning_tokens", usage.reasoning_tokens());
        }
        out.opt_number("cost_usd", record.cost_usd);
        // Present (true) when tokens were used on a model without prices.
        out.flag("unpriced", record.unpriced());
        out.opt_str("quota_fallback", record.quota_fallback.as_deref());
        out.opt_str("cache", record.cache.map(CacheResult::as_str));
        out.opt_number("cache_saved_usd", record.cache_saved_usd);
        if let Some(body) = &record.request_body {
            out.str("request_body", &body.text());
            out.flag("request_body_truncated", body.truncated);
        }
        if let Some(body) = &record.response_body {
            out.str("response_body", &body.text());
            out.flag("response_body_truncated", body.truncated);
        }
        out.0.extend_from_slice(b"}\n");
        Some(out.0)
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

/// A JSON object being written, its opening brace and first field already out: each
/// method writes `,"name":value`.
struct JsonObject(Vec<u8>);

impl JsonObject {
    /// `,"name":`; names are constants with nothing to escape.
    fn key(&mut self, name: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        self.string(value);
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(name, value);
        }
    }

    /// A number or `true`/`false`, as serde_json writes it (a non-finite float as
    /// `null`).
    fn number(&mut self, name: &str, value: impl Serialize) {
        self.key(name);
        // Writing a number to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, &value);
    }

    fn opt_number(&mut self, name: &str, value: Option<impl Serialize>) {
        if let Some(value) = value {
            self.number(name, value);
        }
    }

    /// `,"name":true` when set; left out otherwise.
    fn flag(&mut self, name: &str, set: bool) {
        if set {
            self.number(name, true);
        }
    }

    /// A JSON string. Most values (ids, names) need no escaping: they are copied whole
    /// after one pass over their bytes; others are escaped by serde_json.
    fn string(&mut self, value: &str) {
        let plain = value.bytes().fold(true, |plain, b| {
            plain & (b >= 0x20 && b != b'"' && b != b'\\')
        });
        if plain {
            self.0.push(b'"');
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(b'"');
        } else {
            // Writing a string to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.0, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_api::snapshot::Pricing;

    use super::*;
    use crate::ir::Usage;

    /// Every field, in its place and format: the line as the derived serializer wrote
    /// it (names, order, numbers, escapes), after the timestamp.
    #[test]
    fn a_full_line_is_written_field_by_field() {
        let mut record = RequestRecord::new(
            "r\"1".into(),
            http::Method::POST,
            "/v1/chat/completions?x=1".parse().unwrap(),
        );
        record.status = 200;
        let labels = [("team", "a\"b"), ("tier", "gold\n")];
        let labels = labels.map(|(k, v)| (k.to_string(), v.to_string()));
        record.called_by("ns/alice", &labels.into_iter().collect());
        record.model = Some("gpt-4o".into());
        record.operation = Some(crate::ir::Operation::ChatCompletions);
        record.stream = true;
        record.route = Some("ns/chat".into());
        record.quota_fallback = Some("ns/q".into());
        record.cache = Some(CacheResult::Miss);
        record.cache_saved_usd = Some(0.25);
        record.tried.attempt("ns/openai", "gpt-4o-2024", None);
        record.stream_outcome = Some(StreamOutcome::Complete);
        record.error = Some("client_gone");
        record.headers_after = Some(std::time::Duration::from_micros(1500));
        record.latency = std::time::Duration::from_micros(123_456);
        record.usage = Some(Usage::new(10, 20, 3).with_reasoning(5));
        record.cost_usd = Some(1e-7);
        record.request_body = Some(LoggedBody::capture(b"{\"a\":\"\xe2\x82\xac\\\x01\"}", 12));
        record.response_body = Some(LoggedBody::capture(b"ok\t", 100));
        let line = Line(&record).json().unwrap();
        let line = String::from_utf8(line).unwrap();
        let rest = &line[line.find("Z\",").expect("a timestamp") + 2..];
        let expected = concat!(
            r#","level":"INFO""#,
            r#","message":"request""#,
            r#","target":"switchboard::access""#,
            r#","request_id":"r\"1""#,
            r#","method":"POST""#,
            r#","path":"/v1/chat/completions""#,
            r#","status":200"#,
            r#","consumer":"ns/alice""#,
            r#","consumer_labels":{"team":"a\"b""#,
            r#","tier":"gold\n"}"#,
            r#","route":"ns/chat""#,
            r#","provider":"ns/openai""#,
            r#","model":"gpt-4o""#,
            r#","upstream_model":"gpt-4o-2024""#,
            r#","attempts":1"#,
            r#","stream":true"#,
            r#","stream_outcome":"complete""#,
            r#","error":"client_gone""#,
            r#","latency_ms":123.456"#,
            r#","headers_ms":1.5"#,
            r#","ttft_ms":1.5"#,
            r#","input_tokens":10"#,
            r#","output_tokens":20"#,
            r#","cached_tokens":3"#,
            r#","cache_write_tokens":0"#,
            r#","cache_write_1h_tokens":0"#,
            r#","reasoning_tokens":5"#,
            r#","cost_usd":1e-7"#,
            r#","unpriced":true"#,
            r#","quota_fallback":"ns/q""#,
            r#","cache":"miss""#,
            r#","cache_saved_usd":0.25"#,
            r#","request_body":"{\"a\":\"€\\\u0001\"""#,
            r#","request_body_truncated":true"#,
            r#","response_body":"ok\t"}"#,
            "\n"
        );
        assert_eq!(rest, expected);
    }

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
