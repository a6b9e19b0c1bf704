//! Google's Gemini API as clients see it (`POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse`): the model from the path, request reading and
//! error bodies in Google's format. A request is read untyped: it passes through whole
//! to Gemini providers and is typed into the IR (`super::typed`) only for the others.

use bytes::Bytes;
use http::{Response, Uri};

use super::{MAX_MODEL_NAME, bad, top_level_fields};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::formats::gemini as format;
use crate::ir::request::gemini_method;
use crate::ir::{ClientApi, Operation, Request};

/// Reads and checks a `generateContent` request. The model is the path's; the body
/// is the provider's to judge when it passes through, and `super::typed`'s when it is
/// translated.
pub fn read_request(body: Bytes, uri: &Uri, stream: bool) -> Result<Request, ProxyError> {
    if stream && !sse_asked(uri) {
        // Without `alt=sse` Google streams one JSON array, written piece by piece;
        // every Google SDK asks for server-sent events, which are the gateway's one way
        // of streaming.
        return Err(bad(
            "streamGenerateContent is served as server-sent events only: add '?alt=sse' to the URL",
        ));
    }
    let model = model_name(uri.path())?;
    if body.is_empty() {
        return Err(bad("request body is empty; send a JSON object"));
    }
    let fields = top_level_fields(&body)?;
    if !fields.contains_key("contents") {
        return Err(bad("missing required field 'contents'"));
    }
    Ok(Request {
        api: ClientApi::Gemini,
        operation: Operation::ChatCompletions,
        model,
        stream,
        // Gemini streams always carry `usageMetadata`.
        client_wants_usage: true,
        body,
        fields,
        // Gemini's API has no headers of its own to pass on.
        api_headers: Vec::new(),
        chat: None,
        trace: Default::default(),
    })
}

fn sse_asked(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "alt" && value == "sse")
    })
}

/// The model named in the path (`models/{model}:method`), percent-decoded.
fn model_name(path: &str) -> Result<String, ProxyError> {
    let invalid = || {
        bad(&format!(
            "the model in the path must be a non-empty name of at most {MAX_MODEL_NAME} bytes"
        ))
    };
    let (raw, _) = gemini_method(path).ok_or_else(invalid)?;
    let model = percent_decode(raw).ok_or_else(invalid)?;
    if model.is_empty() || model.len() > MAX_MODEL_NAME {
        return Err(invalid());
    }
    Ok(model)
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The error as Google's `{"error":{"code","message","status"}}`, with the gateway's
/// status.
pub fn error_response(error: &ProxyError) -> Response<Body> {
    let status = error.class().status;
    body::json(
        status,
        format::write_error(status.as_u16(), &error.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_and_method_from_the_path() {
        let method = |path| gemini_method(path).map(|(_, stream)| stream);
        assert_eq!(
            method("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some(false)
        );
        assert_eq!(
            method("/v1/models/gemini-2.5-flash:generateContent"),
            Some(false)
        );
        assert_eq!(
            method("/v1beta/models/a:b:streamGenerateContent"),
            Some(true)
        );
        assert_eq!(method("/v1beta/models/m:countTokens"), None);
        assert_eq!(method("/v1beta/models/:generateContent"), None);
        // OpenAI's model lookup, for a model whose name has a colon.
        assert_eq!(method("/v1/models/llama3:8b"), None);
        assert_eq!(
            ClientApi::of_path("/v1/models/llama3:8b"),
            ClientApi::OpenAI
        );
        assert_eq!(
            ClientApi::of_path("/v1/models/m:generateContent"),
            ClientApi::Gemini
        );
        assert_eq!(
            ClientApi::of_path("/v1beta/models/m:countTokens"),
            ClientApi::Gemini
        );
        assert_eq!(
            model_name("/v1beta/models/my%20model:generateContent").unwrap(),
            "my model"
        );
        assert!(model_name("/v1beta/models/bad%2:generateContent").is_err());
        assert!(model_name("/v1beta/models/%FF:generateContent").is_err());
    }

    #[test]
    fn streams_need_alt_sse() {
        let body = Bytes::from_static(b"{\"contents\":[]}");
        let path = "/v1beta/models/m:streamGenerateContent";
        assert!(read_request(body.clone(), &path.parse().unwrap(), true).is_err());
        let uri = format!("{path}?alt=sse").parse().unwrap();
        let request = read_request(body, &uri, true).unwrap();
        assert_eq!(request.model, "m");
        assert!(request.stream);
    }

    #[test]
    fn errors_use_google_statuses() {
        let cases = [
            (ProxyError::InvalidKey, 401, "UNAUTHENTICATED"),
            (ProxyError::UnknownModel("m".into()), 404, "NOT_FOUND"),
            (ProxyError::BadRequest("x".into()), 400, "INVALID_ARGUMENT"),
            (ProxyError::UpstreamConnect, 502, "INTERNAL"),
            (ProxyError::NotReady, 503, "UNAVAILABLE"),
            (
                ProxyError::UpstreamTimeout(std::time::Duration::from_secs(1)),
                504,
                "DEADLINE_EXCEEDED",
            ),
        ];
        for (error, code, status) in cases {
            let response = error_response(&error);
            assert_eq!(response.status().as_u16(), code, "{error:?}");
            let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                response.into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["status"], status, "{error:?}");
            assert!(json["error"]["message"].is_string());
        }
    }
}
