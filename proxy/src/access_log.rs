//! One log line per request, emitted when the request is over: at the response for
//! whole responses, at the stream's end for streams.
//!
//! In JSON mode the line is serialized straight to stdout in the same shape as the
//! other (tracing) log lines. Going through tracing's JSON formatter cost a fifth of
//! the proxy's CPU per request (bench/README.md); the access line is the one log line
//! every request writes, so it gets its own writer. In text mode it goes through
//! tracing, for humans.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::ir::Usage;
use crate::providers::{StreamEnd, StreamEndHook, StreamOutcome};
use crate::settings::LogFormat;

/// The tracing target of access lines; `RUST_LOG=switchboard::access=off` silences them.
pub const TARGET: &str = "switchboard::access";

/// What is known about a request, filled in as it moves through the pipeline.
#[derive(Debug, Clone)]
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
    /// Upstream attempts made (0 when none was: an error before routing).
    pub attempts: u32,
    pub status: u16,
    pub error: Option<&'static str>,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub stream_outcome: Option<StreamOutcome>,
    /// Time to response headers.
    pub headers_after: Option<Duration>,
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
    input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
}

// === impl RequestLog ===

impl RequestLog {
    pub fn new(
        format: LogFormat,
        request_id: String,
        method: http::Method,
        uri: http::Uri,
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
            attempts: 0,
            status: 0,
            error: None,
            stream: false,
            usage: None,
            stream_outcome: None,
            headers_after: None,
        }
    }

    pub fn emit(&self, started: Instant) {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match self.format {
            LogFormat::Json => self.write_json(latency_ms),
            LogFormat::Text => self.trace(latency_ms),
        }
    }

    fn write_json(&self, latency_ms: f64) {
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
            input_tokens: self.usage.map(|u| u.prompt_tokens),
            output_tokens: self.usage.map(|u| u.completion_tokens),
            cached_tokens: self.usage.map(|u| u.cached_tokens()),
        };
        let mut buf = Vec::with_capacity(512);
        if serde_json::to_writer(&mut buf, &line).is_ok() {
            buf.push(b'\n');
            // One write of a whole line: lines from other threads never interleave.
            let _ = std::io::stdout().lock().write_all(&buf);
        }
    }

    fn trace(&self, latency_ms: f64) {
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
            input_tokens = self.usage.map(|_| usage.prompt_tokens),
            output_tokens = self.usage.map(|_| usage.completion_tokens),
            cached_tokens = self.usage.map(|_| usage.cached_tokens()),
            "request"
        );
    }
}

/// Joins a streaming request's log with its stream's end: whichever arrives second
/// emits the line.
#[derive(Debug, Clone)]
pub struct StreamLog {
    started: Instant,
    state: Arc<Mutex<Pending>>,
}

#[derive(Debug, Default)]
enum Pending {
    #[default]
    Waiting,
    Log(Box<RequestLog>),
    End(StreamEnd),
    Done,
}

// === impl StreamLog ===

impl StreamLog {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            state: Arc::default(),
        }
    }

    /// The request's log, once its response headers are out.
    pub fn log(&self, log: RequestLog) {
        self.arrive(Pending::Log(Box::new(log)));
    }

    /// The stream's end.
    pub fn end(&self, end: StreamEnd) {
        self.arrive(Pending::End(end));
    }

    fn arrive(&self, arrival: Pending) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let previous = std::mem::replace(&mut *state, Pending::Done);
        let (mut log, end) = match (previous, arrival) {
            (Pending::Waiting, arrival) => {
                *state = arrival;
                return;
            }
            (Pending::Log(log), Pending::End(end)) | (Pending::End(end), Pending::Log(log)) => {
                (log, end)
            }
            _ => return,
        };
        drop(state);
        log.usage = end.usage;
        log.stream_outcome = Some(end.outcome);
        log.emit(self.started);
    }
}

/// Passes a stream's end on to the request's `StreamLog` only for the attempt whose
/// reply goes to the client: a failed attempt's stream ends too, when it is dropped. An
/// end that arrives before the choice (a stream whole in its first read) waits for it.
#[derive(Debug)]
pub struct AttemptEnd {
    log: StreamLog,
    /// Whether this attempt was chosen, and an end that arrived before that.
    state: Mutex<(bool, Option<StreamEnd>)>,
}

impl AttemptEnd {
    pub fn new(log: &StreamLog) -> Arc<Self> {
        Arc::new(Self {
            log: log.clone(),
            state: Mutex::new((false, None)),
        })
    }

    /// The hook to give the attempt's provider call.
    pub fn hook(self: &Arc<Self>) -> StreamEndHook {
        let gate = self.clone();
        Box::new(move |end| {
            let mut state = gate.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.0 {
                drop(state);
                gate.log.end(end);
            } else {
                state.1 = Some(end);
            }
        })
    }

    /// This attempt's reply goes to the client.
    pub fn choose(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = true;
        if let Some(end) = state.1.take() {
            drop(state);
            self.log.end(end);
        }
    }
}
