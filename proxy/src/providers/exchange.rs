//! What every HTTP provider adapter does the same way: send the adapter's body with a
//! deadline, and turn a failed status into the right `ProxyError`, keeping the
//! provider's message (never its credentials: every body is scrubbed of the key, see
//! `scrub`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use switchboard_api::snapshot::ApiKey;

use super::{Adapter, Call, Endpoint, Upstream, scrub};
use crate::error::{NativeError, ProxyError};
use crate::ir::ClientApi;
use crate::ir::chat::StreamEvent;
use crate::ir::reply::Reply;

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
    let response = post::<A>(&call, body).await?;
    if call.request.stream {
        return Ok(with_model(A::stream(&call, response), call.upstream_model));
    }
    let body = whole_body(response, call.limits.max_body_bytes, call.timeout).await?;
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
/// as it is known to be over `max` bytes: never more than `max` is held.
async fn whole_body(
    mut response: reqwest::Response,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ProxyError> {
    let too_large = || ProxyError::UpstreamTooLarge { limit: max };
    let announced = response.content_length();
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(announced.map_or(0, |n| n as usize));
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e, timeout))? {
        if chunk.len() > max - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// POSTs the JSON `body` to the call's upstream URL with the request id, trace context
/// and the adapter's credentials, and returns the response if its status is a
/// success; otherwise the error, as the adapter reads it.
async fn post<A: Adapter>(call: &Call<'_>, body: Bytes) -> Result<reqwest::Response, ProxyError> {
    let request = call.request;
    let upstream = call.upstream;
    let url = upstream
        .urls
        .get(call.upstream_model, Endpoint::of(request))
        .cloned()
        .ok_or_else(|| ProxyError::UnknownModel(request.model.clone()))?;
    let mut builder = upstream
        .client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", call.request_id)
        .body(body);
    if let Some(traceparent) = &call.trace.traceparent {
        builder = builder.header("traceparent", traceparent);
    }
    if let Some(tracestate) = &call.trace.tracestate {
        builder = builder.header("tracestate", tracestate);
    }
    let key = upstream.config.api_key.as_ref();
    let builder = A::authorize(builder, call, key.map(ApiKey::expose));
    let response = send(builder, request.stream, call.timeout).await?;
    check_status::<A>(response, key).await
}

/// Sends `builder`. A whole response must arrive within `timeout`; a stream must
/// start (headers) within it.
async fn send(
    mut builder: reqwest::RequestBuilder,
    stream: bool,
    timeout: Duration,
) -> Result<reqwest::Response, ProxyError> {
    if stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    } else {
        builder = builder.timeout(timeout);
    }
    tokio::time::timeout(timeout, builder.send())
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(timeout))?
        .map_err(|e| classify(&e, timeout))
}

fn classify(error: &reqwest::Error, timeout: Duration) -> ProxyError {
    if error.is_timeout() {
        ProxyError::UpstreamTimeout(timeout)
    } else if error.is_connect() {
        ProxyError::UpstreamConnect
    } else {
        ProxyError::UpstreamProtocol
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
    response: reqwest::Response,
    key: Option<&ApiKey>,
) -> Result<reqwest::Response, ProxyError> {
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

async fn error_body(mut response: reqwest::Response) -> Bytes {
    let mut body = BytesMut::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
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
