//! The request path, as one readable script:
//! authenticate -> read and parse the body -> pick a route -> plan the backends -> call
//! them in turn (retries, fallback) -> respond, then log. Each step is a call into the
//! module that owns it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::access_log::{LoggedBody, RequestLog};
use crate::body::{Body, full};
use crate::cache::{Cache, CacheResult, Found, Plan as CachePlan, Recorder};
use crate::client_api::{self, openai};
use crate::error::ProxyError;
use crate::finish::{AttemptEnd, RequestEnd};
use crate::formats;
use crate::health::CircuitView;
use crate::ir::chat::StreamEvent;
use crate::ir::{ClientApi, Operation};
use crate::metrics::{AttemptOutcome, Metrics};
use crate::plan::{self, Candidate, RetryBudget};
use crate::providers::{self, Call, Reply};
use crate::quota::{self, Quotas, Refused};
use crate::runtime::{Runtime, RuntimeHandle};
use crate::settings::Settings;
use crate::{auth, routing, telemetry};
use futures_util::StreamExt;
use switchboard_api::snapshot::{Consumer, ProviderType, Route};
use tracing::Instrument;

/// Header carrying the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";
/// Response header: the provider (`namespace/name`) that answered.
pub const PROVIDER_HEADER: &str = "x-switchboard-provider";
/// Response header: the model name sent to that provider.
pub const MODEL_HEADER: &str = "x-switchboard-model";
/// Response header: upstream attempts made, the answering one included.
pub const ATTEMPTS_HEADER: &str = "x-switchboard-attempts";
/// Response header: the quota (`namespace/name`) whose limit sent the request to its
/// fallback route.
pub const QUOTA_FALLBACK_HEADER: &str = "x-switchboard-quota-fallback";

/// Response header: what the cache did (`hit`, `miss` or `bypass`), on routes with a
/// cache.
pub const CACHE_HEADER: &str = crate::cache::CACHE_HEADER;

/// State shared by every request.
#[derive(Debug)]
pub struct Gateway {
    pub runtime: RuntimeHandle,
    pub settings: Settings,
    /// `None` with `--metrics-listen off`.
    pub metrics: Option<Arc<Metrics>>,
    pub quotas: Arc<Quotas>,
    pub cache: Arc<Cache>,
    /// Set once shutdown begins; `/readyz` then fails.
    pub draining: AtomicBool,
}

// === impl Gateway ===

impl Gateway {
    pub fn new(
        settings: Settings,
        metrics: Option<Arc<Metrics>>,
        quotas: Arc<Quotas>,
        cache: Arc<Cache>,
    ) -> Self {
        Self {
            runtime: RuntimeHandle::default(),
            settings,
            metrics,
            quotas,
            cache,
            draining: AtomicBool::new(false),
        }
    }

    /// Serves `runtime` from now on; in-flight requests finish on the one they began with.
    pub fn install(&self, runtime: Runtime) {
        if let Some(metrics) = &self.metrics {
            metrics.config_applied(runtime.version());
        }
        self.runtime.swap(runtime);
    }

    /// A new config was refused; the current one keeps serving.
    pub fn refused(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.config_refused();
        }
    }
}

/// Serves one request. Never fails: errors become responses in the client's format.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    // Health probes arrive every few seconds; keep them out of metrics and the log.
    let probe = is_probe(request.uri().path());
    let metrics = gateway.metrics.as_ref().filter(|_| !probe);
    let span = match probe {
        true => tracing::Span::none(),
        false => telemetry::request_span(request.method(), request.uri().path(), request.headers()),
    };
    let end = RequestEnd::new(
        started,
        metrics.cloned(),
        gateway
            .settings
            .log_bodies
            .then_some(gateway.settings.log_body_max_bytes),
        span.clone(),
    );
    let mut pending = end.pending(RequestLog::new(
        gateway.settings.log_format,
        request_id.clone(),
        request.method().clone(),
        request.uri().clone(),
        metrics.map(Metrics::in_flight).unwrap_or_default(),
    ));
    // Errors are written in the format of the API the path belongs to.
    let api = match request.uri().path() {
        "/v1/messages" => ClientApi::Anthropic,
        _ => ClientApi::OpenAI,
    };

    let result = dispatch(&gateway, request, &request_id, pending.log(), &end)
        .instrument(span)
        .await;
    let mut log = pending.take();
    let mut response = result.unwrap_or_else(|error| {
        log.error = Some(error.kind());
        client_api::error_response(api, &error)
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    answered_by(&log, response.headers_mut());
    if let Some(rate_limits) = &log.rate_limits {
        rate_limits.write(response.headers_mut());
    }
    if let Some(result) = log.cache {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(result.as_str()));
    }
    if let Some(value) = log
        .quota_fallback
        .as_deref()
        .and_then(|q| HeaderValue::from_str(q).ok())
    {
        response.headers_mut().insert(QUOTA_FALLBACK_HEADER, value);
    }

    log.status = response.status().as_u16();
    log.headers_after = Some(started.elapsed());
    if probe {
        return response;
    }
    let stream = log.stream && response.status() == StatusCode::OK;
    end.respond(log, stream, response)
}

/// Which provider and model answered, and after how many attempts (also on errors,
/// where they name the last attempt).
fn answered_by(log: &RequestLog, headers: &mut HeaderMap) {
    if log.attempts == 0 {
        return;
    }
    let values = [
        (PROVIDER_HEADER, log.provider.as_deref()),
        (MODEL_HEADER, log.upstream_model.as_deref()),
    ];
    for (name, value) in values {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(log.attempts));
}

async fn dispatch(
    gateway: &Gateway,
    request: Request<Incoming>,
    request_id: &str,
    log: &mut RequestLog,
    end: &RequestEnd,
) -> Result<Response<Body>, ProxyError> {
    check_head(&request, gateway.settings.max_header_bytes)?;
    // A Uri clone shares its bytes; the path is matched without copying it.
    let uri = request.uri().clone();
    let path = uri.path();
    let runtime = gateway.runtime.current();
    let ready =
        || -> Result<Arc<Runtime>, ProxyError> { runtime.clone().ok_or(ProxyError::NotReady) };
    match (request.method(), path) {
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, "/readyz") => match &runtime {
            Some(runtime) if !gateway.draining.load(Ordering::Relaxed) => Ok(text(
                StatusCode::OK,
                format!("ready: config {}\n", runtime.version()),
            )),
            _ => Ok(text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")),
        },
        (&Method::POST, "/v1/chat/completions" | "/v1/embeddings" | "/v1/messages") => {
            let endpoint = match path {
                "/v1/embeddings" => ClientEndpoint::OpenAI(Operation::Embeddings),
                "/v1/messages" => ClientEndpoint::AnthropicMessages,
                _ => ClientEndpoint::OpenAI(Operation::ChatCompletions),
            };
            proxy(
                gateway,
                ready()?.as_ref(),
                request,
                endpoint,
                request_id,
                log,
                end,
            )
            .await
        }
        (&Method::GET, "/v1/models") => models(ready()?.as_ref(), request.headers(), None, log),
        (&Method::GET, _) if path.starts_with(MODELS_PREFIX) => {
            let id = &path[MODELS_PREFIX.len()..];
            models(ready()?.as_ref(), request.headers(), Some(id), log)
        }
        (
            method,
            "/healthz"
            | "/readyz"
            | "/v1/chat/completions"
            | "/v1/embeddings"
            | "/v1/messages"
            | "/v1/models",
        ) => Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
        }),
        _ => Err(ProxyError::NotFound(path.to_string())),
    }
}

const MODELS_PREFIX: &str = "/v1/models/";

/// `GET /v1/models` (every model the caller may use) or `GET /v1/models/{id}`.
fn models(
    runtime: &Runtime,
    headers: &HeaderMap,
    id: Option<&str>,
    log: &mut RequestLog,
) -> Result<Response<Body>, ProxyError> {
    let (consumer_id, consumer) = auth::authenticate(runtime, headers)?;
    log.consumer = Some(consumer_id.to_string());
    let visible = routing::visible_models(runtime, consumer);
    match id {
        None => Ok(openai::models_response(visible)),
        Some(id) => visible
            .into_iter()
            .find(|m| *m == id)
            .map(openai::model_response)
            .ok_or_else(|| ProxyError::UnknownModel(id.to_string())),
    }
}

/// Which client API endpoint a request came to.
#[derive(Debug, Clone, Copy)]
enum ClientEndpoint {
    OpenAI(Operation),
    AnthropicMessages,
}

/// Chat completions, messages and embeddings: the gateway's main path.
async fn proxy(
    gateway: &Gateway,
    runtime: &Runtime,
    request: Request<Incoming>,
    endpoint: ClientEndpoint,
    request_id: &str,
    log: &mut RequestLog,
    end: &RequestEnd,
) -> Result<Response<Body>, ProxyError> {
    let consumer = auth::authenticate(runtime, request.headers())?;
    log.consumer = Some(consumer.0.to_string());
    log.consumer_labels = Some(consumer.1.labels.clone()).filter(|l| !l.is_empty());

    check_content_type(request.headers())?;
    let (parts, body) = request.into_parts();
    let body = read_body(
        &parts.headers,
        body,
        gateway.settings.max_body_bytes,
        gateway.settings.body_read_timeout,
    )
    .await?;
    if let Some(limit) = end.body_limit() {
        log.request_body = Some(LoggedBody::capture(&body, limit));
    }
    let mut request = match endpoint {
        ClientEndpoint::OpenAI(operation) => openai::parse_request(operation, body)?,
        ClientEndpoint::AnthropicMessages => client_api::anthropic::parse_request(body)?,
    };
    request.trace = crate::ir::TraceHeaders::from_headers(&parts.headers);
    log.model = Some(request.model.clone());
    log.operation = Some(request.operation);
    log.stream = request.stream;

    let selected = routing::select(runtime, consumer.1, &request.model, &parts.headers)?;
    let recorder = match look_up(
        gateway,
        selected,
        consumer.0,
        &request,
        &parts.headers,
        log,
        end,
    )
    .await?
    {
        Looked::Hit(response) => return Ok(response),
        Looked::Miss(recorder) => recorder,
    };
    let (route_id, route) = admit(gateway, runtime, consumer, selected, &request, log).await?;
    log.route = Some(route_id.to_string());
    let budget = log.reservation.as_ref().and_then(|r| r.stream_budget);
    // An answer from a quota's fallback route is not the answer of the route asked for.
    let recorder = recorder.filter(|_| route_id == selected.0);
    let mut reply = attempt(
        runtime,
        route_id,
        route,
        &mut request,
        request_id,
        log,
        end,
        recorder.as_ref(),
    )
    .await?;
    if let Some(recorder) = recorder {
        reply = recorder.record(reply, log.pricing, budget);
    }

    Ok(match reply {
        Reply::Native { body, usage } => {
            log.usage = usage;
            openai::json_response(StatusCode::OK, body)
        }
        Reply::NativeStream(body) => client_api::event_stream(body),
        Reply::Chat(response) => {
            log.usage = Some(response.usage);
            client_api::write_response(request.api, &response)
        }
        Reply::ChatStream(mut events) => {
            if let Some(budget) = budget {
                events = quota::meter(events, budget, request.body.len().div_ceil(4) as u64);
            }
            let end = end.clone();
            client_api::event_stream(client_api::stream_body(
                request.api,
                request.client_wants_usage,
                events,
                Box::new(move |stream_end| end.stream_ended(stream_end)),
            ))
        }
    })
}

/// What the cache had for a request.
enum Looked {
    /// The answer, from the cache.
    Hit(Response<Body>),
    /// Nothing; with a recorder to store the answer, if the route caches it.
    Miss(Option<Recorder>),
}

/// Serves the request from the route's cache if it can. A hit is answered before quota
/// admission: it uses no allowance, and `finish` counts its tokens and cost as saved.
async fn look_up(
    gateway: &Gateway,
    (route_id, route): (&str, &Route),
    consumer: &str,
    request: &crate::ir::Request,
    headers: &HeaderMap,
    log: &mut RequestLog,
    end: &RequestEnd,
) -> Result<Looked, ProxyError> {
    let ticket = match Cache::plan(route_id, route, consumer, request, headers)? {
        CachePlan::Off => return Ok(Looked::Miss(None)),
        CachePlan::Bypass => {
            log.cache = Some(CacheResult::Bypass);
            if let Some(metrics) = end.metrics() {
                metrics.cache_lookup(route_id, CacheResult::Bypass.as_str(), false);
            }
            return Ok(Looked::Miss(None));
        }
        CachePlan::Use(ticket) => ticket,
    };
    let (result, coalesced, looked) = match gateway.cache.find(route_id, &ticket).await {
        Found::Hit { entry, coalesced } => {
            let stream_end = end.clone();
            match entry.replay(request, Box::new(move |e| stream_end.stream_ended(e))) {
                Some(response) => {
                    log.route = Some(route_id.to_string());
                    log.cache_saved_usd = entry.cost_usd;
                    if !request.stream {
                        log.usage = Some(entry.usage);
                    }
                    (CacheResult::Hit, coalesced, Looked::Hit(response))
                }
                // Unreadable (written by another version): answered upstream instead.
                None => (CacheResult::Miss, false, Looked::Miss(None)),
            }
        }
        Found::Miss(recorder) => (CacheResult::Miss, false, Looked::Miss(Some(recorder))),
    };
    log.cache = Some(result);
    if let Some(metrics) = end.metrics() {
        metrics.cache_lookup(route_id, result.as_str(), coalesced);
    }
    Ok(looked)
}

/// Reserves the request's usage on every quota that applies. A quota over its limit
/// refuses the request with 429, or sends it to the quota's fallback route (once, if
/// the consumer may use it), where the remaining quotas apply.
async fn admit<'r>(
    gateway: &Gateway,
    runtime: &'r Runtime,
    consumer: (&str, &Consumer),
    (route_id, route): (&'r str, &'r Route),
    request: &crate::ir::Request,
    log: &mut RequestLog,
) -> Result<(&'r str, &'r Route), ProxyError> {
    if runtime.snapshot.quotas.is_empty() {
        return Ok((route_id, route));
    }
    let demand = quota::Demand::new(runtime, request, consumer.0, route_id, route);
    let refusal = match gateway
        .quotas
        .admit(runtime, &demand, &BTreeSet::new())
        .await
    {
        Ok(reservation) => {
            if let Some(reservation) = reservation {
                log.hold(reservation);
            }
            return Ok((route_id, route));
        }
        Err(Refused::Unavailable { quota }) => return Err(ProxyError::QuotaUnavailable { quota }),
        Err(Refused::OverLimit(refusal)) => refusal,
    };
    let fallback = refusal
        .fallback_route
        .as_deref()
        .filter(|id| routing::route_allowed(consumer.1, id))
        .and_then(|id| runtime.snapshot.routes.get_key_value(id));
    let Some((fallback_id, fallback)) = fallback else {
        log.rate_limits = Some(refusal.rate_limits.clone());
        return Err(refusal.into());
    };
    if let Some(metrics) = &gateway.metrics {
        metrics.quota_fallback(&refusal.quota);
    }
    let excluded = BTreeSet::from([refusal.quota.clone()]);
    let demand = demand.on_route(runtime, fallback_id, fallback);
    match gateway.quotas.admit(runtime, &demand, &excluded).await {
        Ok(reservation) => {
            log.quota_fallback = Some(refusal.quota);
            if let Some(reservation) = reservation {
                log.hold(reservation);
            }
            Ok((fallback_id.as_str(), fallback))
        }
        Err(Refused::Unavailable { quota }) => Err(ProxyError::QuotaUnavailable { quota }),
        Err(Refused::OverLimit(refusal)) => {
            log.rate_limits = Some(refusal.rate_limits.clone());
            Err(refusal.into())
        }
    }
}

/// Tries the route's backends in plan order until one answers, within the route's
/// attempt limit, retry budget and total timeout. Retryable failures (see
/// `ProxyError::is_retryable`) move on to the next backend at once; a backend tried
/// before is tried again after a jittered backoff, and not before its `Retry-After`
/// (one asking for more than `maxBackoff` is not tried again). Other failures return
/// at once. A stream fails over only until the provider answers with its headers;
/// after that the reply is the client's, and a failure ends the stream with an error
/// event.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    runtime: &Runtime,
    route_id: &str,
    route: &Route,
    request: &mut crate::ir::Request,
    request_id: &str,
    log: &mut RequestLog,
    end: &RequestEnd,
    recorder: Option<&Recorder>,
) -> Result<Reply, ProxyError> {
    let operation = request.operation;
    let metrics = end.metrics();
    let plan = plan::order(route.strategy, candidates(runtime, route, operation));
    if plan.is_empty() {
        return Err(
            match route
                .backends
                .first()
                .and_then(|b| runtime.provider(&b.provider))
            {
                Some(_) => ProxyError::BadRequest(format!(
                    "the providers serving '{}' have no {} API",
                    request.model,
                    operation.path().trim_start_matches('/')
                )),
                None => ProxyError::UnknownModel(request.model.clone()),
            },
        );
    }
    // Every backend is ejected: the plan holds the one ejected longest ago; try it.
    let forced = plan.iter().all(|c| c.ejected_since.is_some());
    let policy = &route.retry;
    let budget = runtime.retry_budget(route_id);
    if let Some(budget) = budget {
        budget.deposit();
    }
    let started = Instant::now();
    let total = route.total_timeout_ms.map(Duration::from_millis);
    let backoff = Duration::from_millis(policy.backoff_ms);
    let max_backoff = Duration::from_millis(policy.max_backoff_ms);
    let mut last_error: Option<ProxyError> = None;
    // Per plan entry: not before this instant (its Retry-After), or not again at all
    // (it asked for longer than `maxBackoff`).
    let mut not_before: Vec<Option<Instant>> = vec![None; plan.len()];
    let mut given_up = vec![false; plan.len()];
    let mut attempts = 0;
    // Steps walk the plan round and round; a step whose backend the circuit refuses
    // (ejected meanwhile, or probed by another request) is skipped without counting
    // as an attempt, and a whole round of refusals ends the request.
    let mut refused_in_a_row = 0;
    let mut step = 0;
    // The plan entry of the first attempt: a later attempt elsewhere is a fallback.
    let mut first_choice = None;
    while attempts < policy.attempts && refused_in_a_row < plan.len() {
        let index = step % plan.len();
        let round = (step / plan.len()) as u32;
        step += 1;
        if given_up[index] {
            refused_in_a_row += 1;
            continue;
        }
        let backend = plan[index].backend;
        let (Some(provider), Some(health)) =
            (runtime.provider(&backend.provider), runtime.health(backend))
        else {
            refused_in_a_row += 1;
            continue;
        };
        let Some(model) = provider.config.models.get(&backend.model) else {
            refused_in_a_row += 1;
            continue;
        };
        if last_error.is_some() {
            if !budget.is_none_or(RetryBudget::withdraw) {
                tracing::debug!(route = route_id, "retry budget spent; not retrying");
                break;
            }
            // A backend tried before waits a backoff, and at least its Retry-After.
            let mut delay = if round > 0 {
                plan::backoff(backoff, max_backoff, round)
            } else {
                Duration::ZERO
            };
            if let Some(at) = not_before[index] {
                delay = delay.max(at.saturating_duration_since(Instant::now()));
            }
            if total.is_some_and(|t| started.elapsed() + delay >= t) {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        let Some(tracked) = health.begin(forced) else {
            refused_in_a_row += 1;
            continue;
        };
        refused_in_a_row = 0;
        attempts += 1;
        let first = *first_choice.get_or_insert(index);
        if attempts > 1
            && let Some(metrics) = metrics
        {
            metrics.retry(route_id, index != first);
        }
        log.attempts = attempts;
        log.provider = Some(backend.provider.clone());
        log.upstream_model = Some(model.upstream_name.clone());
        log.pricing = model.pricing;
        if request.chat.is_none() && !providers::speaks(provider.config.kind, request.api) {
            // Only OpenAI requests arrive untyped; they are typed when translated.
            request.chat = Some(formats::openai::parse_request(&request.body)?);
        }
        let mut timeout = Duration::from_millis(
            route
                .request_timeout_ms
                .unwrap_or(provider.config.request_timeout_ms),
        );
        if let Some(total) = total {
            timeout = timeout.min(total.saturating_sub(started.elapsed()));
        }
        let attempt_end = AttemptEnd::new(end);
        let span = telemetry::attempt_span(
            operation.name(),
            provider_name(provider.config.kind),
            &backend.provider,
            &model.upstream_name,
            attempts,
        );
        let trace = telemetry::upstream_headers(&span, &request.trace);
        let first_token = route.first_token_timeout_ms.map(Duration::from_millis);
        let result = async {
            let reply = providers::call(Call {
                request,
                provider,
                upstream_model: &model.upstream_name,
                timeout,
                request_id,
                trace,
                budget: log.reservation.as_ref().and_then(|r| r.stream_budget),
                on_stream_end: match recorder {
                    Some(recorder) => recorder.watch(attempt_end.hook()),
                    None => attempt_end.hook(),
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
        if let Some(metrics) = metrics {
            metrics.attempt(&backend.provider, &model.upstream_name, outcome);
        }
        match result {
            Ok(reply) => {
                attempt_end.choose();
                tracked.succeeded();
                return Ok(reply);
            }
            Err(error) if error.is_retryable() => {
                tracked.failed(&route.circuit);
                match error.retry_after_delay() {
                    Some(asked) if asked > max_backoff => given_up[index] = true,
                    Some(asked) => not_before[index] = Some(Instant::now() + asked),
                    None => {}
                }
                tracing::debug!(
                    request_id,
                    provider = %backend.provider,
                    attempt = attempts,
                    error = %error,
                    "attempt failed; trying the next backend"
                );
                last_error = Some(error);
            }
            // The provider answered: alive, and the request is at fault; no verdict.
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or(ProxyError::UpstreamOverloaded {
        retry_after: None,
        message: Some("every backend of the route is ejected after failing".to_string()),
    }))
}

/// Waits for a stream's first event, so that a stream which fails or stays silent
/// before sending anything can still fail over: the client has received nothing yet.
/// Whole replies pass through.
async fn first_event(reply: Reply, within: Option<Duration>) -> Result<Reply, ProxyError> {
    let deadline = async {
        match within {
            Some(within) => tokio::time::sleep(within).await,
            None => std::future::pending().await,
        }
    };
    let silent = || ProxyError::UpstreamTimeout(within.unwrap_or_default());
    match reply {
        Reply::NativeStream(mut body) => {
            let first = tokio::select! {
                first = body.frame() => first,
                () = deadline => return Err(silent()),
            };
            match first {
                Some(Ok(frame)) => {
                    let rest = http_body_util::BodyStream::new(body);
                    let stream = futures_util::stream::once(async { Ok(frame) }).chain(rest);
                    Ok(Reply::NativeStream(BodyExt::boxed_unsync(
                        http_body_util::StreamBody::new(stream),
                    )))
                }
                Some(Err(_)) | None => Err(ProxyError::UpstreamProtocol),
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
            match first {
                Some(batch) if batch.iter().any(|e| matches!(e, StreamEvent::Error(_))) => {
                    Err(ProxyError::UpstreamProtocol)
                }
                Some(batch) => Ok(Reply::ChatStream(Box::pin(
                    futures_util::stream::once(async { batch }).chain(events),
                ))),
                None => Err(ProxyError::UpstreamProtocol),
            }
        }
        whole @ (Reply::Native { .. } | Reply::Chat(_)) => Ok(whole),
    }
}

/// The route's backends that can serve `operation`, with what the plan weighs them by.
/// `gen_ai.provider.name`: the GenAI conventions' names where they have one.
fn provider_name(kind: ProviderType) -> &'static str {
    match kind {
        ProviderType::OpenAI => "openai",
        ProviderType::AzureOpenAI => "azure.ai.openai",
        ProviderType::Anthropic => "anthropic",
        ProviderType::Gemini => "gcp.gemini",
        ProviderType::OpenAICompatible => "openai_compatible",
        ProviderType::Echo => "switchboard.echo",
    }
}

fn candidates<'r>(runtime: &Runtime, route: &'r Route, operation: Operation) -> Vec<Candidate<'r>> {
    let now = Instant::now();
    route
        .backends
        .iter()
        .filter_map(|backend| {
            let provider = runtime.provider(&backend.provider)?;
            if !providers::supports(provider.config.kind, operation) {
                return None;
            }
            let health = runtime.health(backend)?;
            let price = provider
                .config
                .models
                .get(&backend.model)
                .and_then(|m| m.pricing)
                .map(|p| p.input_per_million + p.output_per_million);
            Some(Candidate {
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

/// Refuses a request head (request line and headers, counted as sent) larger than
/// `limit`. hyper's buffer stops heads past twice the limit (`server::serve`); this
/// answers the rest in the client's API format.
fn check_head<B>(request: &Request<B>, limit: usize) -> Result<(), ProxyError> {
    // "name: value\r\n" per header, plus the request line.
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = request.method().as_str().len() + target + 12;
    match headers + line > limit {
        true => Err(ProxyError::HeadTooLarge { limit }),
        false => Ok(()),
    }
}

/// Request bodies are JSON. Accepted: no Content-Type, `application/json` and
/// `application/*+json` (any parameters), and `application/x-www-form-urlencoded`,
/// which is what `curl -d` sends when no type is given (the body is read as JSON all
/// the same). Anything else (multipart forms, XML, plain text, binary) is refused
/// with 415 rather than half-understood.
fn check_content_type(headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let Ok(value) = value.to_str() else {
        return Err(ProxyError::UnsupportedMediaType("(not text)".to_string()));
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    // Compared as bytes, without case and without copying on every request.
    let bytes = essence.as_bytes();
    let suffixed_json = bytes.len() > "application/+json".len()
        && bytes[..12].eq_ignore_ascii_case(b"application/")
        && bytes[bytes.len() - 5..].eq_ignore_ascii_case(b"+json");
    let accepted = essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        || suffixed_json;
    match accepted {
        true => Ok(()),
        // Echoed back, so only a short printable prefix of what the client sent.
        false => Err(ProxyError::UnsupportedMediaType(
            essence.to_ascii_lowercase().chars().take(64).collect(),
        )),
    }
}

/// Reads the whole body, refusing more than `limit` bytes or a body that takes longer
/// than `within` to arrive.
async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    within: Duration,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let collected = tokio::time::timeout(within, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ProxyError::BodyTimeout(within))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(_) => Err(ProxyError::BadRequest(
            "the request body could not be read".to_string(),
        )),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The client's request id if it is short and printable, otherwise a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// A UUIDv7: time-ordered, so ids sort by arrival in logs. The random bits come from
/// fastrand rather than the OS: an id needs to be unique, not secret, and a getrandom
/// system call per request is measurable.
fn new_request_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}
