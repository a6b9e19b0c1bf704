//! The end of a request: its response goes out, its stream (if any) ends, then its
//! cost is worked out once, its quota reservation settled to what it used, and its
//! span, metrics and access line written, exactly once (`RequestEnd`).
//!
//! While the response is being made, a request is `Pending`: the pipeline fills in its
//! `RequestRecord` from what each step returns, and the request holds its place in the
//! in-flight count and its quota reservation. The reply becomes the response in
//! `reply` (whole, or a stream that is metered, recorded for the cache and reports its
//! end here).
//!
//! A whole response ends when its headers are out. A stream ends when its headers are
//! out *and* its stream has ended (the provider's end carries the usage). With body
//! logging on, a response also waits until its body has been sent, to log it. A request
//! whose client leaves before the response ends as status 499 (`client_gone`).

mod reply;

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

pub use self::reply::Taps;
use crate::access_log;
use crate::body::{Body, BoxError};
use crate::gateway::Gateway;
use crate::ir::Request;
use crate::ir::record::{CacheResult, LoggedBody, RequestRecord};
use crate::ir::reply::Reply;
use crate::ir::stream::StreamEnd;
use crate::metrics::{BackendSeries, InFlight, Metrics, OpenStream};
use crate::quota::{RateLimits, Reservation};
use crate::telemetry;

/// Status logged for a request whose client went away before its response.
const CLIENT_GONE: u16 = 499;

/// Where the parts of a request's end meet. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestEnd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway: Arc<Gateway>,
    started: Instant,
    /// The request's span (disabled unless traces are exported); it ends with the
    /// request, when the last clone of this is dropped.
    span: tracing::Span,
    state: Mutex<Join>,
}

/// The parts that have arrived.
#[derive(Debug, Default)]
struct Join {
    record: Option<Box<RequestRecord>>,
    held: Held,
    /// Whether the record waits for a stream end, and the end once it came.
    wants_stream: bool,
    stream: Option<StreamEnd>,
    /// Whether the record waits for its response body, and the body once it was sent.
    wants_body: bool,
    body: Option<LoggedBody>,
    done: bool,
}

/// What a request holds until it ends: its place in the in-flight (and open-stream)
/// counts, and its quota reservation.
#[derive(Debug, Default)]
struct Held {
    in_flight: InFlight,
    open_stream: Option<OpenStream>,
    reservation: Option<Reservation>,
    /// The metric series of the backend that answered.
    answered_by: Option<Arc<BackendSeries>>,
}

/// A request whose response is being made. Dropped before the response is ready (the
/// client left), the request ends as `client_gone`.
#[derive(Debug)]
pub struct Pending {
    /// What is known so far; the pipeline writes each step's result here.
    pub record: RequestRecord,
    /// Rate-limit headers for the response.
    pub rate_limits: Option<RateLimits>,
    held: Held,
    end: RequestEnd,
    /// Cleared when the response is ready and the record moves on.
    armed: bool,
}

// === impl RequestEnd ===

impl RequestEnd {
    /// A request arrived, with `span`: it counts as in flight until it ends.
    pub fn begin(gateway: Arc<Gateway>, span: tracing::Span, record: RequestRecord) -> Pending {
        let in_flight = gateway
            .metrics
            .as_ref()
            .map(Metrics::in_flight)
            .unwrap_or_default();
        let end = Self {
            inner: Arc::new(Inner {
                gateway,
                started: Instant::now(),
                span,
                state: Mutex::default(),
            }),
        };
        Pending {
            record,
            rate_limits: None,
            held: Held {
                in_flight,
                ..Held::default()
            },
            end,
            armed: true,
        }
    }

    /// With body logging, the most bytes of each body to log.
    fn body_limit(&self) -> Option<usize> {
        let settings = &self.inner.gateway.settings;
        settings.log_bodies.then_some(settings.log_body_max_bytes)
    }

    /// The stream ended.
    pub fn stream_ended(&self, end: StreamEnd) {
        self.arrive(|join| join.stream = Some(end));
    }

    /// How the stream ended, once it did (and until the request finishes).
    #[cfg(test)]
    fn stream_end(&self) -> Option<StreamEnd> {
        let join = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        join.stream
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
        let complete = join.record.is_some()
            && (!join.wants_stream || join.stream.is_some())
            && (!join.wants_body || join.body.is_some());
        if !complete {
            return;
        }
        join.done = true;
        let Some(mut record) = join.record.take() else {
            return;
        };
        if let Some(end) = join.stream.take() {
            record.usage = end.usage;
            record.stream_outcome = Some(end.outcome);
            // Answered (2xx), yet the client got an error event: counted with it, so
            // that broken streams show in `switchboard_requests_total`.
            record.error = record.error.or(end.outcome.error_type());
        }
        record.response_body = join.body.take();
        let held = std::mem::take(&mut join.held);
        drop(join);
        self.finish(*record, held);
    }

    /// Works out the cost, settles the reservation, lets go of what the request held,
    /// and writes the span, metrics and access line.
    fn finish(&self, mut record: RequestRecord, held: Held) {
        let gateway = &self.inner.gateway;
        record.latency = self.inner.started.elapsed();
        if record.cache == Some(CacheResult::Hit)
            && let Some(usage) = record.usage.take()
        {
            // A hit costs nothing: its tokens and cost count as saved, not spent.
            let route = record.route.as_deref().unwrap_or_default();
            gateway
                .cache
                .count_saved(route, &usage, record.cache_saved_usd);
        }
        record.cost_usd = record.price();
        if let Some(reservation) = held.reservation {
            // A stream that used an unknown amount keeps its reservation rather than
            // being refunded.
            if !record.usage_unknown() {
                reservation.settle(record.usage, record.cost_usd);
            }
        }
        // Out of the in-flight and open-stream counts before it is counted as answered,
        // so that a scrape never sees it answered and still in flight.
        drop(held.open_stream);
        drop(held.in_flight);
        telemetry::record_request(&self.inner.span, &record);
        if let Some(metrics) = &gateway.metrics {
            metrics.request(&record, held.answered_by.as_deref());
        }
        access_log::write(gateway.settings.log_format, &record);
    }
}

// === impl Pending ===

impl Pending {
    /// The backend whose answer this is, for the request's metrics (a cache hit has
    /// none).
    pub fn answered_by(&mut self, series: Option<Arc<BackendSeries>>) {
        self.held.answered_by = series;
    }

    /// Holds the request's quota reservation until it is settled at the end.
    pub fn hold(&mut self, reservation: Option<Reservation>) {
        self.held.reservation = reservation;
    }

    /// With body logging on, keeps the start of the request body.
    pub fn capture_request_body(&mut self, body: &[u8]) {
        if let Some(limit) = self.end.body_limit() {
            self.record.request_body = Some(LoggedBody::capture(body, limit));
        }
    }

    /// `reply` as the response to `request`: whole answers now, streams as they
    /// arrive, through `taps`.
    pub fn answer(&mut self, reply: Reply, request: &Request, taps: Taps) -> Response<Body> {
        if let Reply::Native { usage, .. } = &reply {
            self.record.usage = *usage;
        }
        if let Reply::Chat(answer) = &reply {
            self.record.usage = Some(answer.usage);
        }
        reply::response(reply, request, taps, &self.end)
    }

    /// The response is ready: the record ends with it, or with its stream, and with
    /// its body when bodies are logged. Returns the response to send.
    pub fn respond(mut self, response: Response<Body>) -> Response<Body> {
        self.armed = false;
        let end = self.end.clone();
        let mut record = std::mem::take(&mut self.record);
        let mut held = std::mem::take(&mut self.held);
        record.status = response.status().as_u16();
        record.headers_after = Some(end.inner.started.elapsed());
        let stream = record.stream && response.status() == StatusCode::OK;
        if stream {
            held.open_stream = end.inner.gateway.metrics.as_ref().map(Metrics::open_stream);
        }
        let body_limit = end.body_limit();
        let response = match body_limit {
            Some(limit) => response.map(|body| {
                LoggingBody {
                    inner: body,
                    captured: BytesMut::new(),
                    limit,
                    truncated: false,
                    end: end.clone(),
                }
                .boxed_unsync()
            }),
            None => response,
        };
        end.arrive(|join| {
            join.record = Some(Box::new(record));
            join.held = held;
            join.wants_stream = stream;
            join.wants_body = body_limit.is_some();
        });
        response
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let mut record = std::mem::take(&mut self.record);
            record.status = CLIENT_GONE;
            record.error = Some("client_gone");
            self.end.finish(record, std::mem::take(&mut self.held));
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
