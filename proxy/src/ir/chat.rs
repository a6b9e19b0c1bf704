//! The internal chat representation: what every client API parses into and every
//! provider adapter translates from, so N client APIs and M providers need N + M
//! adapters, not N x M.
//!
//! It holds what the supported APIs can all say. A field one API has and the others
//! do not (Anthropic's `top_k`, OpenAI's `seed`) is typed here too, so the provider
//! adapter that cannot express it refuses the request with a 400 naming the field,
//! instead of dropping it.

use serde_json::Value;

use super::Usage;

/// A chat request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub response_format: Option<ResponseFormat>,
    /// An end-user id for the provider's abuse monitoring (`user`, `metadata.user_id`).
    pub user: Option<String>,
    /// Number of choices; only OpenAI-shaped providers can give more than one.
    pub n: Option<u64>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    /// Text and images, in order. Empty for an assistant turn that only calls tools.
    pub content: Vec<Part>,
    /// The tools an assistant turn calls.
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the call this is the result of.
    pub tool_call_id: Option<String>,
    /// For `Role::Tool`: whether the tool failed (Anthropic's `is_error`).
    pub is_error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// System and developer instructions.
    System,
    User,
    Assistant,
    /// A tool's result.
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// An image the provider fetches itself.
    Url(String),
    /// Inline image bytes, base64-encoded.
    Base64 { media_type: String, data: String },
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments, as the client sent it.
    pub parameters: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        name: String,
        schema: Option<Value>,
        strict: Option<bool>,
    },
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (OpenAI sends a string; others an object).
    pub arguments: String,
}

/// A whole chat answer (one choice).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The provider's response id.
    pub id: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Finish,
    pub usage: Usage,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    /// The stop sequence that ended the answer, when the provider says which.
    pub stop_sequence: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The model called tools and waits for their results.
    ToolCalls,
    /// The provider withheld or cut the answer (safety, refusal, recitation).
    ContentFilter,
}

/// One step of a streamed answer. Providers' stream decoders produce these; client
/// API encoders turn them into the client's events.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The answer begins; always first.
    Start {
        id: String,
        model: String,
        /// Input tokens, when the provider reports them up front (Anthropic).
        usage: Option<Usage>,
    },
    /// More answer text.
    Text(String),
    /// A tool call begins. `index` counts tool calls from 0 in the order they start.
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// More of a tool call's JSON arguments.
    ToolCallArguments { index: u32, arguments: String },
    /// The answer is finished.
    Finish(Finish),
    /// Token counts so far; the last one seen is the stream's usage.
    Usage(Usage),
    /// The provider failed mid-stream; nothing follows.
    Error(StreamError),
    /// The provider ended the stream normally; nothing follows.
    Done,
}

/// A mid-stream failure, as the provider described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub kind: StreamErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// The provider is overloaded (Anthropic's `overloaded_error`, HTTP 503/529).
    Overloaded,
    /// The provider refused or limited the request mid-stream.
    RateLimited,
    /// Anything else: a provider fault, a cut connection, an unreadable event.
    Upstream,
}

// === impl Message ===

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Part::Text(text.into())],
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
        }
    }

    /// The text parts joined; images are skipped.
    pub fn joined_text(&self) -> String {
        let mut text = String::new();
        for part in &self.content {
            if let Part::Text(t) = part {
                text.push_str(t);
            }
        }
        text
    }
}

// === impl StreamEvent ===

impl StreamEvent {
    /// Whether a client encoder must have written the answer's start before this.
    pub fn needs_start(&self) -> bool {
        !matches!(self, StreamEvent::Start { .. } | StreamEvent::Error(_))
    }

    /// A start for a stream whose provider never sent one.
    pub fn anonymous_start() -> Self {
        StreamEvent::Start {
            id: String::new(),
            model: String::new(),
            usage: None,
        }
    }
}

// === impl StreamError ===

impl StreamError {
    pub fn upstream(message: impl Into<String>) -> Self {
        Self {
            kind: StreamErrorKind::Upstream,
            message: message.into(),
        }
    }

    /// The upstream connection broke mid-stream: the one error every stream path
    /// writes for it.
    pub fn broken() -> Self {
        Self::upstream("upstream provider failed mid-stream")
    }

    /// The upstream sent nothing for `idle`: the stream is ended.
    pub fn idle(idle: std::time::Duration) -> Self {
        Self::upstream(format!(
            "upstream provider sent nothing for {idle:?}; the stream is ended"
        ))
    }
}
