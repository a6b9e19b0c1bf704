//! The attempts of one request on its route: the route's backends in plan order until
//! one answers, within the route's attempt limit, retry budget and total timeout.
//!
//! Retryable failures (see `ProxyError::is_retryable`) move on to the next backend at
//! once; a backend tried before is tried again after a jittered backoff, and not before
//! its `Retry-After` (one asking for more than `maxBackoff` is not tried again). A
//! backend that answered a success whose body cannot be read is not tried again (it
//! was paid for), but the next backend is. Other failures return at once. A stream
//! fails over only until its first event; after that the reply is the client's, and a
//! failure ends the stream with an error event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchboard_api::snapshot::Backend;
use tracing::Instrument;

use crate::client_api;
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::health::{self, CircuitView};
use crate::ir::Request;
use crate::ir::chat::{StreamError, StreamErrorKind, StreamEvent};
use crate::ir::record::Tried;
use crate::ir::reply::Reply;
use crate::ir::stream::NativeChunk;
use crate::metrics::{AttemptOutcome, BackendSeries};
use crate::plan::{self, Candidate};
use crate::providers::{self, Call, UpstreamLimits};
use crate::routing::Selected;
use crate::runtime::{PreparedBackend, PreparedRoute, Runtime};
use crate::telemetry;

/// Tries `route`'s backends for `request` until one answers; each attempt is counted
/// in `tried` as it begins (so a request whose client leaves mid-attempt still says
/// where it was). The answer comes with the metric series of the backend that gave it.
pub async fn run(
    gateway: &Gateway,
    runtime: &Runtime,
    route: Selected<'_>,
    request: &mut Request,
    request_id: &str,
    tried: &mut Tried,
) -> Result<(Reply, Option<Arc<BackendSeries>>), ProxyError> {
    let mut attempts = Attempts::plan(runtime, route, request, request_id)?;
    while let Some(next) = attempts.next(tried.attempts).await {
        tried.attempt(
            &next.backend.provider,
            &next.prepared.model.upstream_name,
            next.prepared.model.pricing,
        );
        if tried.attempts > 1
            && let Some(metrics) = &gateway.metrics
        {
            metrics.retry(route.id, attempts.is_fallback(next.index));
        }
        if request.chat.is_none()
            && providers::translates(next.prepared.upstream.config.kind, request)
        {
            // Requests arrive untyped; they are typed when translated.
            request.chat = Some(client_api::typed(request)?);
        }
        let result = attempt(gateway, &attempts, &next, request, tried.attempts).await;
        let series = next.prepared.series.clone();
        if let Some(done) = attempts.judge(next, result, tried.attempts) {
            return done.map(|reply| (reply, series));
        }
    }
    Err(attempts.failure())
}

/// Where a request stands among its route's backends.
struct Attempts<'r> {
    route: Selected<'r>,
    /// The route's retry budget and resolved backends.
    prepared: &'r PreparedRoute,
    request_id: &'r str,
    plan: Vec<Entry<'r>>,
    /// Every backend is ejected: the plan holds the one ejected longest ago; try it.
    forced: bool,
    /// Steps walk the plan round and round; a step whose backend the circuit refuses
    /// (ejected meanwhile, or probed by another request) is skipped without counting
    /// as an attempt, and a whole round of refusals ends the request.
    step: usize,
    refused_in_a_row: usize,
    /// The plan entry of the first attempt: a later attempt elsewhere is a fallback.
    first_choice: Option<usize>,
    last_error: Option<ProxyError>,
    started: Instant,
}

/// A backend of the plan, and when it may be tried again.
struct Entry<'r> {
    backend: &'r Backend,
    prepared: &'r PreparedBackend,
    /// Not before this instant (its Retry-After).
    not_before: Option<Instant>,
    /// Not again at all (it asked for longer than `maxBackoff`).
    given_up: bool,
}

/// The backend to try next, with what trying it takes.
struct Next<'r> {
    index: usize,
    backend: &'r Backend,
    /// Its provider, model, health and metric series.
    prepared: &'r PreparedBackend,
    /// Counts the attempt in flight on the backend; takes its outcome.
    tracked: health::Attempt,
}

// === impl Attempts ===

impl<'r> Attempts<'r> {
    /// The route's backends that can serve the request, in the order to try them.
    fn plan(
        runtime: &'r Runtime,
        route: Selected<'r>,
        request: &Request,
        request_id: &'r str,
    ) -> Result<Self, ProxyError> {
        let operation = request.operation;
        let Some(prepared) = runtime.prepared(route.id) else {
            return Err(ProxyError::UnknownModel(request.model.clone()));
        };
        let candidates = candidates(prepared, route, request);
        let plan = plan::attempt_order(route.route.strategy, candidates);
        if plan.is_empty() {
            let known = route
                .route
                .backends
                .first()
                .and_then(|b| runtime.upstream(&b.provider))
                .is_some();
            return Err(match known {
                true => ProxyError::BadRequest(format!(
                    "the providers serving '{}' have no {} API",
                    request.model,
                    operation.path().trim_start_matches('/')
                )),
                false => ProxyError::UnknownModel(request.model.clone()),
            });
        }
        prepared.retry_budget.deposit();
        Ok(Self {
            route,
            prepared,
            request_id,
            forced: plan.iter().all(|c| c.ejected_since.is_some()),
            plan: plan
                .into_iter()
                .filter_map(|c| {
                    Some(Entry {
                        backend: c.backend,
                        // Every candidate has one (`candidates`).
                        prepared: prepared.backends.get(c.index)?.as_ref()?,
                        not_before: None,
                        given_up: false,
                    })
                })
                .collect(),
            step: 0,
            refused_in_a_row: 0,
            first_choice: None,
            last_error: None,
            started: Instant::now(),
        })
    }

    /// The next backend to try, once its backoff has passed; `None` when the request
    /// has no attempts, budget or time left, or every backend refuses.
    async fn next(&mut self, made: u32) -> Option<Next<'r>> {
        let route = self.route.route;
        let policy = &route.retry;
        while made < policy.attempts && self.refused_in_a_row < self.plan.len() {
            let index = self.step % self.plan.len();
            let round = (self.step / self.plan.len()) as u32;
            self.step += 1;
            let entry = &self.plan[index];
            let backend = entry.backend;
            let prepared = entry.prepared;
            if entry.given_up {
                self.refused_in_a_row += 1;
                continue;
            }
            if self.last_error.is_some() {
                if !self.prepared.retry_budget.withdraw() {
                    tracing::debug!(route = self.route.id, "retry budget spent; not retrying");
                    return None;
                }
                let delay = self.delay(index, round);
                let total = route.total_timeout_ms.map(Duration::from_millis);
                if total.is_some_and(|t| self.started.elapsed() + delay >= t) {
                    return None;
                }
                tokio::time::sleep(delay).await;
            }
            let Some(tracked) = prepared.health.begin(self.forced) else {
                self.refused_in_a_row += 1;
                continue;
            };
            self.refused_in_a_row = 0;
            self.first_choice.get_or_insert(index);
            return Some(Next {
                index,
                backend,
                prepared,
                tracked,
            });
        }
        None
    }

    /// A backend tried before waits a backoff, and at least its Retry-After.
    fn delay(&self, index: usize, round: u32) -> Duration {
        let policy = &self.route.route.retry;
        let mut delay = match round {
            0 => Duration::ZERO,
            _ => plan::backoff(
                Duration::from_millis(policy.backoff_ms),
                Duration::from_millis(policy.max_backoff_ms),
                round,
            ),
        };
        if let Some(at) = self.plan[index].not_before {
            delay = delay.max(at.saturating_duration_since(Instant::now()));
        }
        delay
    }

    /// Whether an attempt on plan entry `index` is on another backend than the first.
    fn is_fallback(&self, index: usize) -> bool {
        self.first_choice.is_some_and(|first| first != index)
    }

    /// What an attempt's result means: the request's answer (or final failure), or
    /// `None` to try again. Tells the backend's circuit how the attempt went.
    fn judge(
        &mut self,
        next: Next<'_>,
        result: Result<Reply, ProxyError>,
        number: u32,
    ) -> Option<Result<Reply, ProxyError>> {
        match result {
            Ok(reply) => {
                next.tracked.succeeded();
                Some(Ok(reply))
            }
            Err(error) if error.is_retryable() => {
                next.tracked.failed(&self.route.route.circuit);
                if let ProxyError::UpstreamUnreadable(what) = &error {
                    // Warned, not debugged: the provider billed an answer nobody got.
                    // `what` is a category and position, never the body's content.
                    tracing::warn!(
                        request_id = self.request_id,
                        provider = %next.backend.provider,
                        model = %next.backend.model,
                        attempt = number,
                        problem = %what,
                        "provider answered with a success whose body cannot be read; not retried on this backend"
                    );
                    if !self.route.route.retry.fallback_on_unreadable {
                        return Some(Err(error));
                    }
                }
                let max_backoff = Duration::from_millis(self.route.route.retry.max_backoff_ms);
                let entry = &mut self.plan[next.index];
                match error.retry_after_delay() {
                    Some(asked) if asked > max_backoff => entry.given_up = true,
                    Some(asked) => entry.not_before = Some(Instant::now() + asked),
                    None => {}
                }
                if !error.retries_same_backend() {
                    entry.given_up = true;
                }
                tracing::debug!(
                    request_id = self.request_id,
                    provider = %next.backend.provider,
                    attempt = number,
                    error = %error,
                    "attempt failed; trying the next backend"
                );
                self.last_error = Some(error);
                None
            }
            // The provider answered: alive, and the request is at fault; no verdict.
            Err(error) => Some(Err(error)),
        }
    }

    /// Why the request got no answer.
    fn failure(&mut self) -> ProxyError {
        self.last_error
            .take()
            .unwrap_or(ProxyError::UpstreamOverloaded {
                retry_after: None,
                message: Some("every backend of the route is ejected after failing".to_string()),
            })
    }
}

/// One attempt: the call to the backend within the attempt's timeout and, for a
/// stream, its first event; in its own span, counted by outcome.
async fn attempt(
    gateway: &Gateway,
    attempts: &Attempts<'_>,
    next: &Next<'_>,
    request: &Request,
    number: u32,
) -> Result<Reply, ProxyError> {
    let route = attempts.route.route;
    let upstream = &next.prepared.upstream;
    let model = &next.prepared.model.upstream_name;
    let mut timeout = Duration::from_millis(
        route
            .request_timeout_ms
            .unwrap_or(upstream.config.request_timeout_ms),
    );
    if let Some(total) = route.total_timeout_ms.map(Duration::from_millis) {
        timeout = timeout.min(total.saturating_sub(attempts.started.elapsed()));
    }
    let span = telemetry::attempt_span(
        request.operation.name(),
        providers::gen_ai_name(upstream.config.kind),
        &next.backend.provider,
        model,
        number,
    );
    let trace = telemetry::upstream_headers(&span, &request.trace);
    let first_token = route.first_token_timeout_ms.map(Duration::from_millis);
    let settings = &gateway.settings;
    let result = async {
        let reply = providers::call(Call {
            request,
            upstream,
            upstream_model: model,
            timeout,
            request_id: attempts.request_id,
            trace,
            limits: UpstreamLimits {
                max_body_bytes: settings.max_upstream_body_bytes,
                max_event_bytes: settings.max_stream_event_bytes,
                stream_idle: route
                    .stream_idle_timeout_ms
                    .map_or(settings.stream_idle_timeout, Duration::from_millis),
                max_stream_bytes: settings.max_stream_bytes,
                max_stream_duration: settings.max_stream_duration,
            },
        })
        .await?;
        first_event(reply, first_token).await
    }
    .instrument(span.clone())
    .await;
    let outcome = match &result {
        Ok(_) => AttemptOutcome::Success,
        Err(error) => {
            telemetry::attempt_failed(&span, error.kind());
            AttemptOutcome::Failed(error.kind())
        }
    };
    if let Some(series) = &next.prepared.series {
        series.attempt(outcome);
    }
    result
}

/// Waits for a stream's first event, so that a stream which fails or stays silent
/// before sending anything can still fail over: the client has received nothing yet.
/// Whole replies pass through.
/// A stream that failed before the client got anything fails its attempt with what the
/// provider said: an overloaded or rate-limited provider is told as such (and its
/// message kept), anything else is a bad response.
fn failed_before_first_event(error: StreamError) -> ProxyError {
    match error.kind {
        StreamErrorKind::Overloaded => ProxyError::UpstreamOverloaded {
            retry_after: None,
            message: Some(error.message),
        },
        StreamErrorKind::RateLimited => ProxyError::UpstreamRefused {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            retry_after: None,
            message: Some(error.message),
            native: None,
        },
        StreamErrorKind::Upstream => ProxyError::UpstreamProtocol,
    }
}

async fn first_event(reply: Reply, within: Option<Duration>) -> Result<Reply, ProxyError> {
    let deadline = async {
        match within {
            Some(within) => tokio::time::sleep(within).await,
            None => std::future::pending().await,
        }
    };
    let silent = || ProxyError::UpstreamTimeout(within.unwrap_or_default());
    match reply {
        Reply::NativeStream(mut chunks) => {
            let first = tokio::select! {
                first = chunks.next() => first,
                () = deadline => return Err(silent()),
            };
            match first {
                Some(first @ NativeChunk::Events { .. }) => Ok(Reply::NativeStream(Box::pin(
                    futures_util::stream::once(async { first }).chain(chunks),
                ))),
                Some(NativeChunk::Failed(error)) => Err(failed_before_first_event(error)),
                Some(NativeChunk::Broken) | None => Err(ProxyError::UpstreamProtocol),
            }
        }
        Reply::ChatStream(mut events) => {
            // A read may decode to no events (a keep-alive comment): wait for one.
            let first_batch = async {
                loop {
                    match events.next().await {
                        Some(batch) if batch.is_empty() => continue,
                        other => return other,
                    }
                }
            };
            let first = tokio::select! {
                first = first_batch => first,
                () = deadline => return Err(silent()),
            };
            let failed = first.as_ref().and_then(|batch| {
                batch.iter().find_map(|e| match e {
                    StreamEvent::Error(error) => Some(error.clone()),
                    _ => None,
                })
            });
            if let Some(error) = failed {
                return Err(failed_before_first_event(error));
            }
            match first {
                Some(batch) => Ok(Reply::ChatStream(Box::pin(
                    futures_util::stream::once(async { batch }).chain(events),
                ))),
                None => Err(ProxyError::UpstreamProtocol),
            }
        }
        whole @ (Reply::Native { .. } | Reply::Chat(_) | Reply::TokenEstimate(_)) => Ok(whole),
    }
}

/// The route's backends that can serve the request, with what the plan weighs them by.
fn candidates<'r>(
    prepared: &PreparedRoute,
    route: Selected<'r>,
    request: &Request,
) -> Vec<Candidate<'r>> {
    let now = Instant::now();
    route
        .route
        .backends
        .iter()
        .zip(&prepared.backends)
        .enumerate()
        .filter_map(|(index, (backend, resolved))| {
            let resolved = resolved.as_ref()?;
            if !providers::supports(resolved.upstream.config.kind, request.operation) {
                return None;
            }
            let health = &resolved.health;
            let price = resolved
                .model
                .pricing
                .map(|p| p.input_per_million + p.output_per_million);
            Some(Candidate {
                index,
                backend,
                in_flight: health.in_flight(),
                latency: health.latency(),
                price,
                ejected_since: match health.view(now) {
                    CircuitView::Ejected(since) => Some(since),
                    CircuitView::Closed | CircuitView::HalfOpen => None,
                },
            })
        })
        .collect()
}
