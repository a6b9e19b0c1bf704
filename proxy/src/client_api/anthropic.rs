//! Anthropic's Messages API as clients see it (`POST /v1/messages` and
//! `/v1/messages/count_tokens`): request reading, error bodies, and token count
//! estimates. A request is read untyped, with the API headers an Anthropic provider
//! reads: it passes through whole to Anthropic providers and is typed into the IR
//! (`super::typed`) only for the others.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::{bad, model_name, stream_flag, top_level_fields};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::formats::anthropic as format;
use crate::ir::{ClientApi, Operation, Request};

/// Response header on a token count the gateway estimated (`estimate`) rather than
/// the provider counted.
pub const TOKEN_COUNT_HEADER: &str = "x-switchboard-token-count";

/// The client's headers an Anthropic provider reads, passed on as sent.
const API_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// Reads and checks a Messages API (or `count_tokens`) request body. Only what the
/// gateway acts on is checked here; the rest is the provider's to judge when it
/// passes through, and `super::typed`'s when it is translated.
pub fn read_request(
    operation: Operation,
    body: Bytes,
    headers: &HeaderMap,
) -> Result<Request, ProxyError> {
    if body.is_empty() {
        return Err(bad("request body is empty; send a JSON object"));
    }
    let fields = top_level_fields(&body)?;
    let model = model_name(fields.get("model").map(|v| &**v))?;
    let stream = stream_flag(fields.get("stream").map(|v| &**v))?;
    if !fields.contains_key("messages") {
        return Err(bad("missing required field 'messages'"));
    }
    if stream && operation == Operation::CountTokens {
        return Err(bad("count_tokens does not support 'stream'"));
    }
    Ok(Request {
        api: ClientApi::Anthropic,
        operation,
        model,
        stream,
        // Anthropic streams always carry usage.
        client_wants_usage: true,
        body,
        fields,
        api_headers: api_headers(headers),
        chat: None,
        trace: Default::default(),
    })
}

/// Every `anthropic-version` and `anthropic-beta` header line, in order.
fn api_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    API_HEADERS
        .iter()
        .flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .map(|value| (HeaderName::from_static(name), value.clone()))
        })
        .collect()
}

/// A token count the gateway estimated, as `count_tokens` answers:
/// `{"input_tokens": n}`, said to be an estimate in `TOKEN_COUNT_HEADER`.
pub fn estimate_response(input_tokens: u64) -> Response<Body> {
    let body = serde_json::json!({ "input_tokens": input_tokens }).to_string();
    let mut response = body::json(StatusCode::OK, body);
    response
        .headers_mut()
        .insert(TOKEN_COUNT_HEADER, HeaderValue::from_static("estimate"));
    response
}

/// The error as Anthropic's `{"type":"error","error":{"type","message"}}`, with the
/// status Anthropic would use.
pub fn error_response(error: &ProxyError) -> Response<Body> {
    let class = error.class();
    let (status, type_) = match error {
        ProxyError::UpstreamOverloaded { .. } => (overloaded(), "overloaded_error"),
        _ => (class.status, error_type(class.status)),
    };
    body::json(status, format::write_error(type_, &error.to_string()))
}

/// Anthropic's 529, which it sends when overloaded.
fn overloaded() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// Anthropic's error type for a status, from its documented list.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_use_anthropic_types_and_statuses() {
        let cases = [
            (ProxyError::InvalidKey, 401, "authentication_error"),
            (ProxyError::UnknownModel("m".into()), 404, "not_found_error"),
            (
                ProxyError::BodyTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (ProxyError::UpstreamConnect, 502, "api_error"),
            (
                ProxyError::UpstreamOverloaded {
                    retry_after: None,
                    message: Some("Overloaded".into()),
                },
                529,
                "overloaded_error",
            ),
        ];
        for (error, status, type_) in cases {
            let response = error_response(&error);
            assert_eq!(response.status().as_u16(), status, "{error:?}");
            let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                response.into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["type"], "error");
            assert_eq!(json["error"]["type"], type_, "{error:?}");
        }
    }
}
