//! One log line per request, emitted when the request is over: at the response for
//! whole responses, at the stream's end for streams.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ir::Usage;
use crate::providers::{StreamEnd, StreamOutcome};

/// What is known about a request, filled in as it moves through the pipeline.
#[derive(Debug, Default, Clone)]
pub struct RequestLog {
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub consumer: Option<String>,
    pub route: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub stream_outcome: Option<StreamOutcome>,
    /// Time to response headers.
    pub headers_after: Option<Duration>,
}

// === impl RequestLog ===

impl RequestLog {
    pub fn emit(&self, started: Instant) {
        let usage = self.usage.unwrap_or_default();
        tracing::info!(
            target: "switchboard::access",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            status = self.status,
            consumer = self.consumer.as_deref(),
            route = self.route.as_deref(),
            provider = self.provider.as_deref(),
            model = self.model.as_deref(),
            upstream_model = self.upstream_model.as_deref(),
            stream = self.stream,
            stream_outcome = self.stream_outcome.map(|o| format!("{o:?}")),
            error = self.error,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
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
