//! The client's request as the gateway reads it.
//!
//! Every request carries the few fields the gateway acts on (model, stream, usage).
//! An OpenAI request also keeps its top-level fields as raw JSON, so that it reaches an
//! OpenAI-shaped provider unchanged and new OpenAI fields pass through without a
//! gateway release. Whenever a request must be translated (another client API, or a
//! provider with another API), it is typed as a [`ChatRequest`].

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::chat::ChatRequest;

/// The client API a request arrived through; errors and responses are written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    /// OpenAI's `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.
    OpenAI,
    /// Anthropic's `/v1/messages`.
    Anthropic,
}

/// The API operation a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ChatCompletions,
    Embeddings,
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
    /// OpenAI requests: top-level fields of the body, in their original order, values
    /// untouched. Empty for other client APIs.
    pub fields: IndexMap<String, Box<RawValue>>,
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

// === impl ClientApi ===

impl ClientApi {
    /// The API whose format answers (and errors) on `path` take.
    pub fn of_path(path: &str) -> Self {
        match path {
            "/v1/messages" => ClientApi::Anthropic,
            _ => ClientApi::OpenAI,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientApi::OpenAI => "openai",
            ClientApi::Anthropic => "anthropic",
        }
    }
}

// === impl Operation ===

impl Operation {
    pub const ALL: [Operation; 2] = [Operation::ChatCompletions, Operation::Embeddings];

    /// `gen_ai.operation.name` in the OpenTelemetry GenAI conventions.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat",
            Operation::Embeddings => "embeddings",
        }
    }

    /// The path suffix of this operation in OpenAI-shaped APIs.
    pub fn path(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "/chat/completions",
            Operation::Embeddings => "/embeddings",
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
