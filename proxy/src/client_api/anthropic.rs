//! Anthropic's Messages API as clients see it (`POST /v1/messages`): request parsing
//! and error bodies. Every request is typed into the IR and translated for whichever
//! provider serves the model.

use bytes::Bytes;
use http::{Response, StatusCode};
use indexmap::IndexMap;

use super::{bad, model_name, stream_flag, top_level_fields};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::formats::anthropic as format;
use crate::ir::{ClientApi, Operation, Request};

/// Reads and checks a Messages API request body, typed into the IR.
pub fn read_request(body: Bytes) -> Result<Request, ProxyError> {
    if body.is_empty() {
        return Err(bad("request body is empty; send a JSON object"));
    }
    let fields = top_level_fields(&body)?;
    let model = model_name(fields.get("model").map(|v| &**v))?;
    let stream = stream_flag(fields.get("stream").map(|v| &**v))?;
    if !fields.contains_key("messages") {
        return Err(bad("missing required field 'messages'"));
    }
    let chat = format::parse_request(&body)?;
    Ok(Request {
        api: ClientApi::Anthropic,
        operation: Operation::ChatCompletions,
        model,
        stream,
        // Anthropic streams always carry usage.
        client_wants_usage: true,
        body,
        fields: IndexMap::new(),
        chat: Some(chat),
        trace: Default::default(),
    })
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
