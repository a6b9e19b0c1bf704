//! The request path, as one readable script (`proxy`): authenticate, read the request,
//! pick a route, answer from the cache if it can, admit it under its quotas, try the
//! route's backends, and answer. The request's end (`finish`) then settles, counts and
//! logs it. Each step is a call into the module that owns it and returns what it
//! found; only this script writes the request's record.

mod admission;
mod attempts;
mod models;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::{self, Body};
use crate::cache::{Hit, Lookup};
use crate::client_api::{self, Endpoint};
use crate::error::ProxyError;
use crate::finish::{Pending, RequestEnd, Taps};
use crate::gateway::Gateway;
use crate::intake::{self, Limits};
use crate::ir::record::{CacheResult, RequestRecord};
use crate::ir::{ClientApi, Operation, Request as ClientRequest};
use crate::routing::Selected;
use crate::runtime::Runtime;
use crate::{auth, routing, telemetry};

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

/// Serves one request. Never fails: errors become responses in the client's format.
/// `admitted` is the server's answer to whether the proxy has room for the request
/// (probes always do); a refusal is answered, counted and logged like any error.
pub async fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
    admitted: Result<(), ProxyError>,
) -> Response<Body> {
    let request_id = request_id(request.headers());
    let path = request.uri().path();
    if is_probe(path) {
        // Probes arrive every few seconds; they stay out of metrics and the log.
        let mut response = probe(&gateway, &request)
            .unwrap_or_else(|error| client_api::error_response(ClientApi::OpenAI, &error));
        stamp_request_id(response.headers_mut(), &request_id);
        return response;
    }
    let api = ClientApi::of_path(path);
    let span = telemetry::request_span(request.method(), path, request.headers());
    let record = RequestRecord::new(request_id, request.method().clone(), request.uri().clone());
    let mut pending = RequestEnd::begin(gateway.clone(), span.clone(), record);

    let result = match admitted {
        Ok(()) => {
            dispatch(&gateway, request, &mut pending)
                .instrument(span)
                .await
        }
        Err(refused) => Err(refused),
    };
    let mut response = result.unwrap_or_else(|error| {
        pending.record.error = Some(error.kind());
        client_api::error_response(api, &error)
    });
    tell(response.headers_mut(), &pending);
    pending.respond(response)
}

async fn dispatch(
    gateway: &Gateway,
    request: Request<Incoming>,
    pending: &mut Pending,
) -> Result<Response<Body>, ProxyError> {
    intake::check_head(&request, gateway.settings.max_header_bytes)?;
    let ready = || gateway.runtime.current().ok_or(ProxyError::NotReady);
    let path = request.uri().path();
    let endpoint = Endpoint::of_path(path);
    match (request.method(), endpoint) {
        (&Method::POST, Some(endpoint)) => {
            proxy(gateway, ready()?.as_ref(), request, endpoint, pending).await
        }
        (&Method::GET, None) if path == "/v1/models" => {
            models::list(ready()?.as_ref(), request.headers(), None, pending)
        }
        (&Method::GET, None) if path.starts_with(MODELS_PREFIX) => {
            let id = &path[MODELS_PREFIX.len()..];
            models::list(ready()?.as_ref(), request.headers(), Some(id), pending)
        }
        (method, Some(_)) => Err(not_allowed(method, path)),
        (method, None) if path == "/v1/models" => Err(not_allowed(method, path)),
        _ => Err(ProxyError::NotFound(path.to_string())),
    }
}

/// Chat completions, messages, embeddings and token counts: the gateway's main path.
async fn proxy(
    gateway: &Gateway,
    runtime: &Runtime,
    http: Request<Incoming>,
    endpoint: Endpoint,
    pending: &mut Pending,
) -> Result<Response<Body>, ProxyError> {
    let snapshot = &runtime.snapshot;
    let caller = auth::authenticate(&runtime.keys, snapshot, http.headers(), Some(http.uri()))?;
    pending.record.called_by(caller.id, &caller.consumer.labels);

    let (head, body) = intake::read(http, limits(gateway)).await?;
    pending.capture_request_body(&body);
    let mut request = client_api::read_request(endpoint, body, &head.uri, &head.headers)?;
    pending.record.asked(&request);

    let asked = routing::select(
        &runtime.routes,
        snapshot,
        caller.consumer,
        &request.model,
        &head.headers,
    )?;
    if request.operation == Operation::CountTokens {
        return count_tokens(gateway, runtime, asked, request, pending).await;
    }
    let recorder = match gateway
        .cache
        .look_up((asked.id, asked.route), caller.id, &request, &head.headers)
        .await?
    {
        Lookup::Hit(hit) => return Ok(answer_from_cache(pending, asked, hit, &request)),
        Lookup::Miss(miss) => {
            pending.record.cache = miss.result;
            miss.recorder
        }
    };

    let (admitted, rate_limits) =
        admission::admit(gateway, snapshot, caller, asked, &request).await;
    pending.rate_limits = rate_limits;
    let admitted = admitted?;
    pending.record.route = Some(admitted.route.id.to_string());
    pending.record.quota_fallback = admitted.fallback_from;
    let budget = admitted.reservation.as_ref().and_then(|r| r.stream_budget);
    pending.hold(admitted.reservation);
    // An answer from a quota's fallback route is not the answer of the route asked for.
    let recorder = recorder.filter(|_| admitted.route.id == asked.id);

    let record = &mut pending.record;
    let (reply, answered_by) = attempts::run(
        gateway,
        runtime,
        admitted.route,
        &mut request,
        &record.request_id,
        &mut record.tried,
    )
    .await?;
    pending.answered_by(answered_by);
    let record = &pending.record;
    let recorder = recorder.map(|r| r.priced(record.tried.pricing));
    Ok(pending.answer(reply, &request, Taps { budget, recorder }))
}

/// `count_tokens`: authenticated and routed like the messages it counts (so the
/// consumer's allow-list applies), then counted by the route's backends. It is not
/// admitted under quotas: it spends no tokens (Anthropic does not bill it), and
/// reserving the tokens of the prompt it counts would refuse a count exactly when the
/// caller needs one to fit its prompt to what is left. Nor is it cached.
async fn count_tokens(
    gateway: &Gateway,
    runtime: &Runtime,
    route: Selected<'_>,
    mut request: ClientRequest,
    pending: &mut Pending,
) -> Result<Response<Body>, ProxyError> {
    pending.record.route = Some(route.id.to_string());
    let record = &mut pending.record;
    let (reply, answered_by) = attempts::run(
        gateway,
        runtime,
        route,
        &mut request,
        &record.request_id,
        &mut record.tried,
    )
    .await?;
    pending.answered_by(answered_by);
    Ok(pending.answer(reply, &request, Taps::default()))
}

/// A hit: the stored answer, which uses no allowance and costs nothing (its tokens and
/// cost count as saved, see `finish`).
fn answer_from_cache(
    pending: &mut Pending,
    route: Selected<'_>,
    hit: Hit,
    request: &ClientRequest,
) -> Response<Body> {
    pending.record.route = Some(route.id.to_string());
    pending.record.cache = Some(CacheResult::Hit);
    pending.record.cache_saved_usd = hit.cost_usd;
    let mut response = pending.answer(hit.reply, request, Taps::default());
    response
        .headers_mut()
        .insert(header::AGE, HeaderValue::from(hit.age));
    response
}

/// The response headers that tell the client what happened: its request id, who
/// answered after how many attempts (on errors, the last attempt), its rate limits,
/// what the cache did, and a quota's fallback.
fn tell(headers: &mut HeaderMap, pending: &Pending) {
    let record = &pending.record;
    stamp_request_id(headers, &record.request_id);
    let tried = &record.tried;
    if tried.attempts > 0 {
        let values = [
            (PROVIDER_HEADER, tried.provider.as_deref()),
            (MODEL_HEADER, tried.upstream_model.as_deref()),
        ];
        for (name, value) in values {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        headers.insert(ATTEMPTS_HEADER, HeaderValue::from(tried.attempts));
    }
    if let Some(rate_limits) = &pending.rate_limits {
        rate_limits.write(headers);
    }
    if let Some(result) = record.cache {
        headers.insert(CACHE_HEADER, HeaderValue::from_static(result.as_str()));
    }
    if let Some(quota) = record.quota_fallback.as_deref() {
        // A platform quota is not named to a team's caller.
        let caller = record.consumer.as_deref().unwrap_or_default();
        let shown = admission::visible_quota(quota, caller).unwrap_or("platform");
        if let Ok(value) = HeaderValue::from_str(shown) {
            headers.insert(QUOTA_FALLBACK_HEADER, value);
        }
    }
}

fn stamp_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
}

fn limits(gateway: &Gateway) -> Limits {
    Limits {
        max_body_bytes: gateway.settings.max_body_bytes,
        body_read_timeout: gateway.settings.body_read_timeout,
    }
}

const MODELS_PREFIX: &str = "/v1/models/";

fn not_allowed(method: &Method, path: &str) -> ProxyError {
    ProxyError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    }
}

/// Whether `path` is a health probe: answered whatever the load, outside metrics and
/// the log.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// `GET /healthz` (alive) and `GET /readyz` (serving a config, not draining).
fn probe(gateway: &Gateway, request: &Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    intake::check_head(request, gateway.settings.max_header_bytes)?;
    let path = request.uri().path();
    if request.method() != Method::GET {
        return Err(not_allowed(request.method(), path));
    }
    if path == "/healthz" {
        return Ok(body::text(StatusCode::OK, "ok\n"));
    }
    match gateway.runtime.current() {
        Some(runtime) if !gateway.draining.load(Ordering::Relaxed) => Ok(body::text(
            StatusCode::OK,
            format!("ready: config {}\n", runtime.version()),
        )),
        _ => Ok(body::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")),
    }
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
