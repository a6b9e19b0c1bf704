//! Client-facing APIs, one module per API with the same shape: read a request into the
//! IR (`read_request`), write an answer (`write_response`) and its stream events
//! (`StreamEncoder`), and write errors (`error_response`), always in the client's own
//! format.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, Uri, header};
use indexmap::IndexMap;
use serde_json::value::RawValue;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::formats::{
    self, anthropic as anthropic_format, gemini as gemini_format, openai as openai_format,
    responses as responses_format,
};
use crate::ir::chat::{ChatRequest, ChatResponse, StreamEvent};
use crate::ir::{ClientApi, Operation, Request, TraceHeaders};

/// Longest model name accepted; model names end up in logs and error messages.
const MAX_MODEL_NAME: usize = 256;

/// A client API endpoint the gateway proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`, `/v1/embeddings` or `/v1/responses`.
    OpenAI(Operation),
    /// `/v1/messages`.
    AnthropicMessages,
    /// `/v1/messages/count_tokens`.
    AnthropicCountTokens,
    /// `/v1beta/models/{model}:generateContent` (`stream: false`) or
    /// `:streamGenerateContent` (`stream: true`), and the same under `/v1`.
    Gemini { stream: bool },
}

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint served at `path`, if it is one.
    pub fn of_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::OpenAI(Operation::ChatCompletions)),
            "/v1/embeddings" => Some(Endpoint::OpenAI(Operation::Embeddings)),
            "/v1/responses" => Some(Endpoint::OpenAI(Operation::Responses)),
            "/v1/messages" => Some(Endpoint::AnthropicMessages),
            "/v1/messages/count_tokens" => Some(Endpoint::AnthropicCountTokens),
            _ => crate::ir::request::gemini_method(path)
                .map(|(_, stream)| Endpoint::Gemini { stream }),
        }
    }
}

/// Reads and checks a request body sent to `endpoint` at `uri` (Gemini names the model
/// there); `headers` carry its trace context and its API's headers.
pub fn read_request(
    endpoint: Endpoint,
    body: Bytes,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Request, ProxyError> {
    let mut request = match endpoint {
        Endpoint::OpenAI(operation) => openai::read_request(operation, body)?,
        Endpoint::AnthropicMessages => {
            anthropic::read_request(Operation::ChatCompletions, body, headers)?
        }
        Endpoint::AnthropicCountTokens => {
            anthropic::read_request(Operation::CountTokens, body, headers)?
        }
        Endpoint::Gemini { stream } => gemini::read_request(body, uri, stream)?,
    };
    request.trace = TraceHeaders::from_headers(headers);
    Ok(request)
}

/// The request typed into the IR, for a provider that translates it: requests are
/// read untyped (`read_request`), so that they can pass through whole.
pub fn typed(request: &Request) -> Result<ChatRequest, ProxyError> {
    match request.api {
        ClientApi::OpenAI => openai_format::parse_request(&request.body),
        ClientApi::Anthropic => anthropic_format::parse_request(&request.body),
        ClientApi::Gemini => gemini_format::parse_request(&request.body),
        // Only providers that speak the Responses API serve it (`providers::supports`)
        // until it is translated (issue 24).
        ClientApi::Responses => Err(bad(
            "the Responses API is not translated to this provider's API yet",
        )),
    }
}

fn bad(message: &str) -> ProxyError {
    ProxyError::BadRequest(message.to_string())
}

/// A request body's top-level fields, each kept as raw JSON.
type Fields = IndexMap<String, Box<RawValue>>;

/// The top-level fields of a JSON object body. A field given twice is refused: JSON
/// parsers disagree on which one wins, so routing, allowlists and quotas could read one
/// `model` while the provider serves the other.
fn top_level_fields(body: &[u8]) -> Result<Fields, ProxyError> {
    serde_json::from_slice::<UniqueFields>(body)
        .map(|unique| unique.0)
        .map_err(|e| bad(&format!("request body is not a valid JSON object: {e}")))
}

/// Deserializes like `Fields`, failing on a repeated key.
struct UniqueFields(Fields);

impl<'de> serde::Deserialize<'de> for UniqueFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueFields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueFields, A::Error> {
                let mut fields = Fields::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if fields.contains_key(&key) {
                        let key: String = key.chars().take(64).collect();
                        return Err(serde::de::Error::custom(format_args!(
                            "field {key:?} appears more than once"
                        )));
                    }
                    fields.insert(key, value);
                }
                Ok(UniqueFields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The `model` field: a non-empty string of bounded length.
fn model_name(raw: Option<&serde_json::value::RawValue>) -> Result<String, ProxyError> {
    match raw {
        None => Err(bad("missing required field 'model'")),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(model) if !model.is_empty() && model.len() <= MAX_MODEL_NAME => Ok(model),
            _ => Err(bad(&format!(
                "'model' must be a non-empty string of at most {MAX_MODEL_NAME} bytes"
            ))),
        },
    }
}

/// The `stream` field: a boolean, absent or null meaning false.
fn stream_flag(raw: Option<&serde_json::value::RawValue>) -> Result<bool, ProxyError> {
    match raw {
        None => Ok(false),
        Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
            Ok(stream) => Ok(stream.unwrap_or(false)),
            Err(_) => Err(bad("'stream' must be a boolean")),
        },
    }
}

/// `error` as a response in `api`'s error format, with the provider's `Retry-After`.
/// A provider's own error body in the client's format is the most useful thing to
/// return, so it is returned as is.
pub fn error_response(api: ClientApi, error: &ProxyError) -> Response<Body> {
    let mut response = match error {
        ProxyError::UpstreamRefused {
            status,
            native: Some(native),
            ..
        } if native.api == api => body::json(*status, native.body.clone()),
        _ => match api {
            ClientApi::OpenAI | ClientApi::Responses => openai::error_response(error),
            ClientApi::Anthropic => anthropic::error_response(error),
            ClientApi::Gemini => gemini::error_response(error),
        },
    };
    if let Some(value) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, value.clone());
    }
    response
}

/// A translated answer in `api`'s format.
pub fn write_response(api: ClientApi, response: &ChatResponse) -> Response<Body> {
    let body = match api {
        ClientApi::OpenAI => openai_format::write_response(response, formats::unix_now()),
        ClientApi::Anthropic => anthropic_format::write_response(response),
        ClientApi::Gemini => gemini_format::write_response(response),
        ClientApi::Responses => responses_format::write_response(response, formats::unix_now()),
    };
    body::json(StatusCode::OK, body)
}

/// Writes IR stream events as `api`'s stream events.
#[derive(Debug)]
pub enum StreamEncoder {
    OpenAI(openai_format::StreamEncoder),
    Anthropic(anthropic_format::StreamEncoder),
    Gemini(gemini_format::StreamEncoder),
    Responses(responses_format::StreamEncoder),
}

// === impl StreamEncoder ===

impl StreamEncoder {
    /// `include_usage`: OpenAI clients get a final usage chunk only when they asked.
    pub fn new(api: ClientApi, include_usage: bool) -> Self {
        match api {
            ClientApi::OpenAI => StreamEncoder::OpenAI(openai_format::StreamEncoder::new(
                include_usage,
                formats::unix_now(),
            )),
            ClientApi::Anthropic => {
                StreamEncoder::Anthropic(anthropic_format::StreamEncoder::default())
            }
            ClientApi::Gemini => StreamEncoder::Gemini(gemini_format::StreamEncoder::default()),
            ClientApi::Responses => {
                StreamEncoder::Responses(responses_format::StreamEncoder::new(formats::unix_now()))
            }
        }
    }

    /// Appends the client's events for `event` to `out`.
    pub fn encode(&mut self, event: StreamEvent, out: &mut BytesMut) {
        match self {
            StreamEncoder::OpenAI(encoder) => encoder.encode(event, out),
            StreamEncoder::Anthropic(encoder) => encoder.encode(event, out),
            StreamEncoder::Gemini(encoder) => encoder.encode(event, out),
            StreamEncoder::Responses(encoder) => encoder.encode(event, out),
        }
    }
}
