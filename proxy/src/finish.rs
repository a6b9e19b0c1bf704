//! The end of a request: its cost is worked out once, its quota reservation settled to
//! what it used, then its span, metrics and access line are written, exactly once.
//!
//! A whole response ends when its headers are out. A stream ends when its headers are
//! out *and* its stream has ended (the provider's end carries the usage). With body
//! logging on, a response also waits until its body has been sent, to log it. A request
//! whose client leaves before the response ends as status 499 (`client_gone`).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::access_log::{LoggedBody, RequestLog};
use crate::body::{Body, BoxError};
use crate::cache::CacheResult;
use crate::metrics::Metrics;
use crate::providers::{StreamEnd, StreamEndHook};

/// Status logged for a request whose client went away before its response.
const CLIENT_GONE: u16 = 499;

/// Where the parts of a request's end meet. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestEnd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    metrics: Option<Arc<Metrics>>,
    /// With body logging: the most bytes of each body kept.
    body_limit: Option<usize>,
    /// The request's span (disabled unless traces are exported); it ends with the
    /// request, when the last clone of this is dropped.
    span: tracing::Span,
    state: Mutex<Join>,
}

/// The parts that have arrived.
#[derive(Debug, Default)]
struct Join {
    log: Option<Box<RequestLog>>,
    /// Whether the log waits for a stream end, and the end once it came.
    wants_stream: bool,
    stream: Option<StreamEnd>,
    /// Whether the log waits for its response body, and the body once it was sent.
    wants_body: bool,
    body: Option<LoggedBody>,
    done: bool,
}

/// Holds a request's log while its response is being made; if the request is dropped
/// before (the client left), the log is finished as `client_gone`.
#[derive(Debug)]
pub struct Pending {
    log: RequestLog,
    end: RequestEnd,
    /// Cleared when the response is ready and the log moves on.
    armed: bool,
}

// === impl RequestEnd ===

impl RequestEnd {
    /// `body_limit`: log bodies, up to that many bytes each.
    pub fn new(
        started: Instant,
        metrics: Option<Arc<Metrics>>,
        body_limit: Option<usize>,
        span: tracing::Span,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                started,
                metrics,
                body_limit,
                span,
                state: Mutex::default(),
            }),
        }
    }

    pub fn metrics(&self) -> Option<&Metrics> {
        self.inner.metrics.as_deref()
    }

    /// With body logging, the most bytes of each body to log.
    pub fn body_limit(&self) -> Option<usize> {
        self.inner.body_limit
    }

    /// Holds `log` until the response is ready.
    pub fn pending(&self, log: RequestLog) -> Pending {
        Pending {
            log,
            end: self.clone(),
            armed: true,
        }
    }

    /// The response is ready: `log` ends with it, or with its stream (when `stream`),
    /// and with its body when bodies are logged. Returns the response to send.
    pub fn respond(
        &self,
        mut log: RequestLog,
        stream: bool,
        response: Response<Body>,
    ) -> Response<Body> {
        if stream {
            log.open_stream = self.inner.metrics.as_ref().map(Metrics::open_stream);
        }
        let response = match self.inner.body_limit {
            Some(limit) => response.map(|body| {
                LoggingBody {
                    inner: body,
                    captured: BytesMut::new(),
                    limit,
                    truncated: false,
                    end: self.clone(),
                }
                .boxed_unsync()
            }),
            None => response,
        };
        self.arrive(|join| {
            join.log = Some(Box::new(log));
            join.wants_stream = stream;
            join.wants_body = self.inner.body_limit.is_some();
        });
        response
    }

    /// The stream ended.
    pub fn stream_ended(&self, end: StreamEnd) {
        self.arrive(|join| join.stream = Some(end));
    }

    fn body_sent(&self, body: LoggedBody) {
        self.arrive(|join| join.body = Some(body));
    }

    /// Records an arrival; finishes the request when it was the last part missing.
    fn arrive(&self, record: impl FnOnce(&mut Join)) {
        let mut join = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if join.done {
            return;
        }
        record(&mut join);
        let complete = join.log.is_some()
            && (!join.wants_stream || join.stream.is_some())
            && (!join.wants_body || join.body.is_some());
        if !complete {
            return;
        }
        join.done = true;
        let Some(mut log) = join.log.take() else {
            return;
        };
        if let Some(end) = join.stream.take() {
            log.usage = end.usage;
            log.stream_outcome = Some(end.outcome);
        }
        log.response_body = join.body.take();
        drop(join);
        self.finish(*log);
    }

    fn finish(&self, mut log: RequestLog) {
        let latency = self.inner.started.elapsed();
        if log.cache == Some(CacheResult::Hit) {
            // A hit costs nothing: its tokens and cost count as saved, not spent.
            if let (Some(usage), Some(metrics)) = (log.usage.take(), &self.inner.metrics) {
                let route = log.route.as_deref().unwrap_or_default();
                metrics.cache_saved(route, &usage, log.cache_saved_usd);
            }
        }
        let cost = log.cost_usd();
        if let Some(reservation) = log.reservation.take() {
            // A stream that was answered but ended without the provider's usage (the
            // client left, or the provider broke off) used an unknown amount: its
            // reservation stands rather than being refunded.
            let unknown = log.stream && log.status == 200 && log.usage.is_none();
            if !unknown {
                reservation.settle(log.usage, cost);
            }
        }
        crate::telemetry::record_request(&self.inner.span, &log, cost);
        if let Some(metrics) = &self.inner.metrics {
            metrics.request(&log, latency, cost);
        }
        log.emit(latency, cost);
    }
}

// === impl Pending ===

impl Pending {
    pub fn log(&mut self) -> &mut RequestLog {
        &mut self.log
    }

    /// The response is ready; the log is the caller's again.
    pub fn take(mut self) -> RequestLog {
        self.armed = false;
        std::mem::take(&mut self.log)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let mut log = std::mem::take(&mut self.log);
            log.status = CLIENT_GONE;
            log.error = Some("client_gone");
            self.end.finish(log);
        }
    }
}

/// Passes a stream's end on to the request's `RequestEnd` only for the attempt whose
/// reply goes to the client: a failed attempt's stream ends too, when it is dropped. An
/// end that arrives before the choice (a stream whole in its first read) waits for it.
#[derive(Debug)]
pub struct AttemptEnd {
    end: RequestEnd,
    /// Whether this attempt was chosen, and an end that arrived before that.
    state: Mutex<(bool, Option<StreamEnd>)>,
}

impl AttemptEnd {
    pub fn new(end: &RequestEnd) -> Arc<Self> {
        Arc::new(Self {
            end: end.clone(),
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
                gate.end.stream_ended(end);
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
            self.end.stream_ended(end);
        }
    }
}

/// A response body that keeps a copy of its first `limit` bytes and hands them to the
/// request's end once it is sent or dropped (the client left).
struct LoggingBody {
    inner: Body,
    captured: BytesMut,
    limit: usize,
    truncated: bool,
    end: RequestEnd,
}

impl HttpBody for LoggingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let room = this.limit - this.captured.len();
            this.captured
                .extend_from_slice(&data[..data.len().min(room)]);
            this.truncated |= data.len() > room;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggingBody {
    fn drop(&mut self) {
        self.end.body_sent(LoggedBody {
            bytes: std::mem::take(&mut self.captured).freeze(),
            truncated: self.truncated,
        });
    }
}
