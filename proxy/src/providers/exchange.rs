//! What every HTTP provider adapter does the same way: send the adapter's body with a
//! deadline, and turn a failed status into the right `ProxyError`, keeping the
//! provider's message (never its credentials: every body is scrubbed of the key, see
//! `scrub`).

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use switchboard_api::snapshot::ApiKey;
use tokio::time::Instant;

use super::{Adapter, Call, Endpoint, Upstream, scrub};
use crate::error::{NativeError, ProxyError};
use crate::ir::ClientApi;
use crate::ir::chat::StreamEvent;
use crate::ir::reply::Reply;
use crate::upstream::UpstreamResponse;

/// What every request to a provider says of its sender.
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("switchboard/", env!("CARGO_PKG_VERSION")));

/// What a provider's error body says, as its adapter reads it.
#[derive(Debug, Default)]
pub struct ErrorBody {
    /// Its message, if it has one.
    pub message: Option<String>,
    /// The client API whose error format the body is in: clients of that API get the
    /// body itself.
    pub native: Option<ClientApi>,
    /// The body says the provider key is wrong (Google answers 400 for that).
    pub bad_key: bool,
}

/// Sends `call` through adapter `A`: its request, with its credentials, then its reply
/// from the response, whole or streamed.
pub async fn call<A: Adapter>(call: Call<'_>) -> Result<Reply, ProxyError> {
    let body = A::request(&call)?;
    // A whole response must arrive within the timeout, body included; a stream must
    // start (headers) within it.
    let deadline = Instant::now() + call.timeout;
    let response = post::<A>(&call, body, deadline).await?;
    if call.request.stream {
        return Ok(with_model(A::stream(&call, response), call.upstream_model));
    }
    let read = whole_body(response.into_body(), call.limits.max_body_bytes);
    let body = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(call.timeout))??;
    // JSON is UTF-8 (RFC 8259). Checked here for every adapter, not left to each
    // parser: a passed-through body is not parsed, and a parser skips the fields it
    // ignores; a stream event that is not UTF-8 fails the same way (`sse::check_utf8`).
    if let Err(error) = std::str::from_utf8(&body) {
        return Err(ProxyError::UpstreamUnreadable(format!(
            "not UTF-8 at byte {}",
            error.valid_up_to()
        )));
    }
    let body = scrub::bytes(body, key(call.upstream));
    Ok(with_model(A::response(&call, body)?, call.upstream_model))
}

/// A translated answer that names no model (left out, `null` or empty: Gemini without
/// `modelVersion`, some OpenAI-compatible servers) names the upstream model it was
/// asked for: clients read `model` and should not get `""`. Passed-through answers are
/// the provider's bytes, untouched.
fn with_model(reply: Reply, asked: &str) -> Reply {
    match reply {
        Reply::Chat(mut answer) => {
            if answer.model.is_empty() {
                answer.model = asked.to_string();
            }
            Reply::Chat(answer)
        }
        Reply::ChatStream(events) => {
            let asked = asked.to_string();
            Reply::ChatStream(Box::pin(events.map(move |mut batch| {
                for event in &mut batch {
                    if let StreamEvent::Start { model, .. } = event
                        && model.is_empty()
                    {
                        model.clone_from(&asked);
                    }
                }
                batch
            })))
        }
        untouched @ (Reply::Native { .. } | Reply::NativeStream(_) | Reply::TokenEstimate(_)) => {
            untouched
        }
    }
}

/// A whole response's body, read as it arrives and refused (`UpstreamTooLarge`) as soon
/// as it is known to be over `max` bytes: never more than `max` is held. A body that
/// arrives in one read is kept as read, not copied.
async fn whole_body(mut body: Incoming, max: usize) -> Result<Bytes, ProxyError> {
    use hyper::body::Body as _;
    let too_large = || ProxyError::UpstreamTooLarge { limit: max };
    let announced = body.size_hint().exact();
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ProxyError::UpstreamProtocol)?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        let held = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if chunk.len() > max - held {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            taken => {
                if let Some(taken) = taken {
                    joined.reserve(announced.map_or(0, |n| n as usize).max(taken.len() * 2));
                    joined.extend_from_slice(&taken);
                }
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// POSTs the JSON `body` to the call's upstream URL with the request id, trace context
/// and the adapter's credentials, and returns the response, its headers in by
/// `deadline`, if its status is a success; otherwise the error, as the adapter reads
/// it.
async fn post<A: Adapter>(
    call: &Call<'_>,
    body: Bytes,
    deadline: Instant,
) -> Result<UpstreamResponse, ProxyError> {
    let request = call.request;
    let upstream = call.upstream;
    let uri = upstream
        .urls
        .get(call.upstream_model, Endpoint::of(request))
        .cloned()
        .ok_or_else(|| ProxyError::UnknownModel(request.model.clone()))?;
    let mut outgoing = http::Request::new(Full::new(body));
    *outgoing.method_mut() = http::Method::POST;
    *outgoing.uri_mut() = uri;
    let headers = outgoing.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::USER_AGENT, USER_AGENT);
    if request.stream {
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    if let Ok(id) = HeaderValue::from_str(call.request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), id);
    }
    let trace = [
        ("traceparent", &call.trace.traceparent),
        ("tracestate", &call.trace.tracestate),
    ];
    for (name, value) in trace {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value.clone());
        }
    }
    let key = upstream.config.api_key.as_ref();
    A::authorize(headers, call, key.map(ApiKey::expose));
    let response = tokio::time::timeout_at(deadline, upstream.client.send(outgoing))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(call.timeout))?
        .map_err(|e| classify(&e))?;
    check_status::<A>(response, key).await
}

/// A failed exchange: the connection could not be made, or the provider broke HTTP.
fn classify(error: &hyper_util::client::legacy::Error) -> ProxyError {
    if error.is_connect() {
        ProxyError::UpstreamConnect
    } else {
        ProxyError::UpstreamProtocol
    }
}

/// Sets the header `name` to `value`, a credential: marked sensitive, so that hyper's
/// HTTP/2 encoder never indexes it. A value a header cannot carry is not sent (the
/// provider then answers 401, reported as the gateway's key being wrong).
pub(super) fn put_secret(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(mut value) = HeaderValue::from_str(value) {
        value.set_sensitive(true);
        headers.insert(name, value);
    }
}

/// Error bodies read beyond this are cut: only the message is wanted.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Provider messages longer than this are cut before they reach the client.
const MAX_MESSAGE: usize = 1024;

/// Passes a success through; maps any other status to the client's error.
///
/// 401 and 403 mean the gateway's provider key is wrong: the client gets a 502 without
/// the provider's message. 503 and 529 mean overloaded. Other 4xx are the client's to
/// fix and keep their status; other 5xx become 502. `Retry-After` is kept.
async fn check_status<A: Adapter>(
    response: UpstreamResponse,
    key: Option<&ApiKey>,
) -> Result<UpstreamResponse, ProxyError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    // Scrubbed before anything reads it: the message, the body clients of its API get.
    let body = scrub::bytes(error_body(response).await, key.map(ApiKey::expose));
    let code = status.as_u16();
    let said = A::error(&body);
    if matches!(code, 401 | 403) || said.bad_key {
        return Err(ProxyError::UpstreamAuth(code));
    }

    let message = said.message.map(|m| clean(m, key));
    Err(match code {
        503 | 529 => ProxyError::UpstreamOverloaded {
            retry_after,
            message,
        },
        400..=499 => ProxyError::UpstreamRefused {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            retry_after,
            message,
            native: said.native.map(|api| NativeError { api, body }),
        },
        _ => ProxyError::UpstreamStatus {
            status: code,
            message,
        },
    })
}

async fn error_body(response: UpstreamResponse) -> Bytes {
    let mut response = response.into_body();
    let mut body = BytesMut::new();
    while body.len() < MAX_ERROR_BODY {
        match response.frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    body.extend_from_slice(&chunk);
                }
            }
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    body.freeze()
}

/// The message with the provider key removed should it appear, then cut to length:
/// cut first, a key across the cut would keep its first characters.
fn clean(mut message: String, key: Option<&ApiKey>) -> String {
    scrub::string(&mut message, key.map(ApiKey::expose));
    crate::formats::truncate(&message, MAX_MESSAGE).to_string()
}

/// The provider's key, which nothing it sends may carry to a client.
pub(super) fn key(upstream: &Upstream) -> Option<&str> {
    upstream.config.api_key.as_ref().map(ApiKey::expose)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_scrubbed_before_it_is_cut() {
        let key: ApiKey = serde_json::from_str("\"sk-LONGmessageKEY-0123456789\"").unwrap();
        let message = format!("{}{}", "x".repeat(1000), key.expose());
        let cleaned = clean(message, Some(&key));
        assert_eq!(cleaned, format!("{}[redacted]", "x".repeat(1000)));
        assert!(!cleaned.contains("sk-LONG"));
        // The marker itself may be cut; the key never is.
        let message = format!("{}{}", "x".repeat(1020), key.expose());
        assert_eq!(clean(message, Some(&key)), "x".repeat(1020) + "[red");
    }
}
