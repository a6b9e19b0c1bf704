//! The client's request as the gateway reads it.
//!
//! Every request carries the few fields the gateway acts on (model, stream, usage).
//! It also keeps its top-level fields as raw JSON, and the API headers its provider
//! reads (Anthropic's `anthropic-version` and `anthropic-beta`), so that it reaches a
//! provider of its own API unchanged and new fields pass through without a gateway
//! release. Whenever a request must be translated (a provider with another API), it is
//! typed as a [`ChatRequest`].

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::chat::ChatRequest;

/// The client API a request arrived through; errors and responses are written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    /// OpenAI's `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.
    OpenAI,
    /// Anthropic's `/v1/messages` and `/v1/messages/count_tokens`.
    Anthropic,
    /// Google's Gemini API: `/v1beta/models/{model}:generateContent` and
    /// `:streamGenerateContent`.
    Gemini,
    /// OpenAI's Responses API, `/v1/responses`: its own answers and stream events,
    /// OpenAI's error format.
    Responses,
}

/// The API operation a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ChatCompletions,
    Embeddings,
    /// Anthropic's `count_tokens`: how many input tokens a Messages request would
    /// take. Spends no tokens itself.
    CountTokens,
    /// OpenAI's Responses API: a model response to `input` items.
    Responses,
}

/// A client's request, read and checked.
#[derive(Debug)]
pub struct Request {
    /// The API the client speaks; responses and errors are written in it.
    pub api: ClientApi,
    pub operation: Operation,
    /// The model name the client asked for (a route's model name or alias).
    pub model: String,
    /// Whether the client asked for a server-sent-event stream.
    pub stream: bool,
    /// Whether the client itself asked for a final usage chunk in the stream.
    pub client_wants_usage: bool,
    /// The body as received; forwarded as is when nothing needs rewriting.
    pub body: Bytes,
    /// Top-level fields of the body, in their original order, values untouched.
    pub fields: IndexMap<String, Box<RawValue>>,
    /// Headers of the client's API that a provider of the same API reads, as the
    /// client sent them (`anthropic-version`, each `anthropic-beta`). Sent only when
    /// the request passes through; a translated request has no use for them.
    pub api_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The typed chat request, when the request is translated.
    pub chat: Option<ChatRequest>,
    /// The client's W3C trace context, for the upstream request.
    pub trace: TraceHeaders,
}

/// W3C trace context headers (`traceparent`, `tracestate`).
#[derive(Debug, Clone, Default)]
pub struct TraceHeaders {
    pub traceparent: Option<http::HeaderValue>,
    pub tracestate: Option<http::HeaderValue>,
}

/// Gemini's beta API version, the one Google's SDKs long defaulted to.
const GEMINI_BETA: &str = "/v1beta/";

/// The model (as in the path, still percent-encoded) and whether it streams, for a
/// Gemini method the gateway serves: `{version}/models/{model}:generateContent` or
/// `:streamGenerateContent`, under `/v1beta` or `/v1` (newer google-genai SDKs default
/// to `v1`), as on Google's endpoint.
pub fn gemini_method(path: &str) -> Option<(&str, bool)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    (!model.is_empty()).then_some((model, stream))
}

// === impl ClientApi ===

impl ClientApi {
    /// The API whose format answers (and errors) on `path` take.
    pub fn of_path(path: &str) -> Self {
        match path {
            "/v1/messages" | "/v1/messages/count_tokens" => ClientApi::Anthropic,
            "/v1/responses" => ClientApi::Responses,
            // Everything under Gemini's beta version, unknown methods included: a
            // Gemini SDK reads errors only in Google's format. Under `/v1`, only the
            // methods served: `/v1/models/{id}` is also OpenAI's.
            _ if path.starts_with(GEMINI_BETA) || gemini_method(path).is_some() => {
                ClientApi::Gemini
            }
            _ => ClientApi::OpenAI,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientApi::OpenAI => "openai",
            ClientApi::Anthropic => "anthropic",
            ClientApi::Gemini => "gemini",
            ClientApi::Responses => "responses",
        }
    }

    /// The API `name` names.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ClientApi::OpenAI,
            ClientApi::Anthropic,
            ClientApi::Gemini,
            ClientApi::Responses,
        ]
        .into_iter()
        .find(|api| api.name() == name)
    }
}

// === impl Operation ===

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::ChatCompletions,
        Operation::Embeddings,
        Operation::CountTokens,
        Operation::Responses,
    ];

    /// `gen_ai.operation.name` in the OpenTelemetry GenAI conventions.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat",
            Operation::Embeddings => "embeddings",
            // Not in the GenAI conventions.
            Operation::CountTokens => "count_tokens",
            Operation::Responses => "responses",
        }
    }

    /// The path suffix of this operation in OpenAI-shaped APIs.
    pub fn path(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "/chat/completions",
            Operation::Embeddings => "/embeddings",
            Operation::CountTokens => "/messages/count_tokens",
            Operation::Responses => "/responses",
        }
    }
}

// === impl Request ===

impl Request {
    /// Input tokens as estimated before the provider counts them: one per four bytes
    /// of the body.
    pub fn estimated_input_tokens(&self) -> u64 {
        (self.body.len() as u64).div_ceil(4)
    }
}

// === impl TraceHeaders ===

impl TraceHeaders {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        Self {
            traceparent: headers.get("traceparent").cloned(),
            tracestate: headers.get("tracestate").cloned(),
        }
    }
}
