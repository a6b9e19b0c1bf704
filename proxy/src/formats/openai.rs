//! OpenAI's chat completions wire format, to and from the IR.
//!
//! Used both ways: as a client API (requests in, responses and chunks out) and as a
//! provider API when the client speaks another API (requests out, responses and
//! chunks in). OpenAI clients talking to OpenAI-shaped providers skip this module:
//! their bytes pass through untouched (see `providers::openai`).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{bad_request, data_url, tool_definition, unsupported_fields};
use crate::error::ProxyError;
use crate::ir::Usage;
use crate::ir::chat::{
    ChatRequest, ChatResponse, Finish, FinishReason, Image, Message, Part, ResponseFormat, Role,
    StreamError, StreamErrorKind, StreamEvent, Tool, ToolCall, ToolChoice,
};
use crate::ir::tolerant::null_as_default;

// ---------------------------------------------------------------------------------
// Requests

#[derive(Deserialize)]
struct WireRequest {
    messages: Vec<WireMessage>,
    tools: Option<Vec<WireTool>>,
    tool_choice: Option<WireToolChoice>,
    parallel_tool_calls: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    response_format: Option<WireResponseFormat>,
    user: Option<String>,
    n: Option<u64>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Fields read elsewhere (the envelope) or with no effect on the answer.
const ENVELOPE_FIELDS: &[&str] = &["model", "stream", "stream_options"];

#[derive(Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage {
    System {
        content: Content,
    },
    Developer {
        content: Content,
    },
    User {
        content: Content,
    },
    Assistant {
        content: Option<Content>,
        tool_calls: Option<Vec<WireToolCall>>,
    },
    Tool {
        content: Content,
        tool_call_id: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<WirePart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

impl From<WireToolCall> for ToolCall {
    fn from(call: WireToolCall) -> Self {
        ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        }
    }
}

fn tool_calls_to_wire(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|call| {
            json!({"id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}})
        })
        .collect()
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    arguments: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireTool {
    Function { function: WireFunction },
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Deserialize)]
struct NamedToolChoice {
    function: NamedFunction,
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: WireJsonSchema },
}

#[derive(Deserialize)]
struct WireJsonSchema {
    name: String,
    schema: Option<Value>,
    strict: Option<bool>,
}

/// Types an OpenAI chat request for translation. Fields the IR does not know are
/// refused (unless null or false), so nothing the client asked for is silently lost.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ProxyError> {
    let wire: WireRequest = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("invalid chat completions request: {e}")))?;
    unsupported_fields(&wire.other, ENVELOPE_FIELDS)?;
    let messages = wire
        .messages
        .into_iter()
        .map(message_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let tools = wire
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|WireTool::Function { function }| Tool {
            name: function.name,
            description: function.description,
            parameters: function.parameters,
        })
        .collect();
    let tool_choice = match wire.tool_choice {
        None => None,
        Some(WireToolChoice::Named(named)) => Some(ToolChoice::Tool(named.function.name)),
        Some(WireToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(bad_request(
                    "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
                ));
            }
        }),
    };
    let response_format = wire.response_format.map(|f| match f {
        WireResponseFormat::Text => ResponseFormat::Text,
        WireResponseFormat::JsonObject => ResponseFormat::JsonObject,
        WireResponseFormat::JsonSchema { json_schema } => ResponseFormat::JsonSchema {
            name: json_schema.name,
            schema: json_schema.schema,
            strict: json_schema.strict,
        },
    });
    Ok(ChatRequest {
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
        temperature: wire.temperature,
        top_p: wire.top_p,
        top_k: None,
        stop: match wire.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        response_format,
        user: wire.user,
        n: wire.n,
        seed: wire.seed,
        presence_penalty: wire.presence_penalty,
        frequency_penalty: wire.frequency_penalty,
    })
}

fn message_from_wire(message: WireMessage) -> Result<Message, ProxyError> {
    Ok(match message {
        WireMessage::System { content } | WireMessage::Developer { content } => Message {
            content: parts(content)?,
            ..Message::text(Role::System, "")
        },
        WireMessage::User { content } => Message {
            content: parts(content)?,
            ..Message::text(Role::User, "")
        },
        WireMessage::Assistant {
            content,
            tool_calls,
        } => Message {
            content: content.map(parts).transpose()?.unwrap_or_default(),
            tool_calls: tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(ToolCall::from)
                .collect(),
            ..Message::text(Role::Assistant, "")
        },
        WireMessage::Tool {
            content,
            tool_call_id,
        } => Message {
            content: parts(content)?,
            tool_call_id: Some(tool_call_id),
            ..Message::text(Role::Tool, "")
        },
    })
}

fn parts(content: Content) -> Result<Vec<Part>, ProxyError> {
    match content {
        Content::Text(text) => Ok(vec![Part::Text(text)]),
        Content::Parts(parts) => parts
            .into_iter()
            .map(|part| match part {
                WirePart::Text { text } => Ok(Part::Text(text)),
                WirePart::ImageUrl { image_url } => {
                    Ok(Part::Image(match data_url(&image_url.url)? {
                        Some((media_type, data)) => Image::Base64 { media_type, data },
                        None => Image::Url(image_url.url),
                    }))
                }
            })
            .collect(),
    }
}

/// Writes `request` as an OpenAI chat completions body for `model`.
pub fn write_request(request: &ChatRequest, model: &str, stream: bool) -> Bytes {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert(
        "messages".into(),
        request.messages.iter().map(message_to_wire).collect(),
    );
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let function = tool_definition(tool, "parameters", None);
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), tools.into());
    }
    if let Some(choice) = &request.tool_choice {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
    }
    insert_some(
        &mut body,
        "parallel_tool_calls",
        request.parallel_tool_calls,
    );
    insert_some(&mut body, "max_tokens", request.max_tokens);
    insert_some(&mut body, "temperature", request.temperature);
    insert_some(&mut body, "top_p", request.top_p);
    if !request.stop.is_empty() {
        body.insert("stop".into(), request.stop.clone().into());
    }
    if let Some(format) = &request.response_format {
        let format = match format {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                let mut spec = json!({"name": name});
                if let Some(schema) = schema {
                    spec["schema"] = schema.clone();
                }
                if let Some(strict) = strict {
                    spec["strict"] = (*strict).into();
                }
                json!({"type": "json_schema", "json_schema": spec})
            }
        };
        body.insert("response_format".into(), format);
    }
    insert_some(&mut body, "user", request.user.clone());
    insert_some(&mut body, "n", request.n);
    insert_some(&mut body, "seed", request.seed);
    insert_some(&mut body, "presence_penalty", request.presence_penalty);
    insert_some(&mut body, "frequency_penalty", request.frequency_penalty);
    if stream {
        body.insert("stream".into(), true.into());
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Bytes::from(Value::Object(body).to_string())
}

fn insert_some<T: Into<Value>>(body: &mut Map<String, Value>, name: &str, value: Option<T>) {
    if let Some(value) = value {
        body.insert(name.to_string(), value.into());
    }
}

fn message_to_wire(message: &Message) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut wire = json!({"role": role});
    let only_text = message.content.iter().all(|p| matches!(p, Part::Text(_)));
    wire["content"] = if message.role == Role::Assistant && message.content.is_empty() {
        Value::Null
    } else if only_text {
        message.joined_text().into()
    } else {
        message
            .content
            .iter()
            .map(|part| match part {
                Part::Text(text) => json!({"type": "text", "text": text}),
                Part::Image(Image::Url(url)) => {
                    json!({"type": "image_url", "image_url": {"url": url}})
                }
                Part::Image(Image::Base64 { media_type, data }) => json!({
                    "type": "image_url",
                    "image_url": {"url": format!("data:{media_type};base64,{data}")},
                }),
            })
            .collect()
    };
    if !message.tool_calls.is_empty() {
        wire["tool_calls"] = tool_calls_to_wire(&message.tool_calls);
    }
    if let Some(id) = &message.tool_call_id {
        wire["tool_call_id"] = id.as_str().into();
    }
    wire
}

// ---------------------------------------------------------------------------------
// Responses

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    choices: Vec<WireChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default, deserialize_with = "null_as_default")]
    message: WireResponseMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireResponseMessage {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    tool_calls: Vec<WireAnswerToolCall>,
}

/// A tool call in an answer. Unlike one in a client's request, a missing or `null` id
/// is tolerated (some OpenAI-compatible servers leave it out): the call gets one.
#[derive(Deserialize)]
struct WireAnswerToolCall {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    function: WireFunctionCall,
}

/// The answer's tool calls, each with an id (`call_<n>` where the provider gave none:
/// an Anthropic or Gemini client must be able to answer the call by its id).
fn answer_tool_calls(calls: Vec<WireAnswerToolCall>) -> Vec<ToolCall> {
    calls
        .into_iter()
        .enumerate()
        .map(|(n, call)| ToolCall {
            id: if call.id.is_empty() {
                format!("call_{n}")
            } else {
                call.id
            },
            name: call.function.name,
            arguments: call.function.arguments,
        })
        .collect()
}

/// Reads an OpenAI chat completion (the first choice).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ProxyError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| super::unreadable(&e))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ProxyError::UpstreamUnreadable("an answer with no choices".into()))?;
    let message = choice.message;
    let refused = message.refusal.is_some();
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        text: message.content.or(message.refusal).unwrap_or_default(),
        tool_calls: answer_tool_calls(message.tool_calls),
        finish: Finish {
            reason: if refused {
                FinishReason::ContentFilter
            } else {
                finish_reason_from_wire(choice.finish_reason.as_deref())
            },
            stop_sequence: None,
        },
        usage: wire.usage.unwrap_or_default(),
    })
}

fn finish_reason_from_wire(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn finish_reason_to_wire(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// Writes `response` as an OpenAI chat completion.
pub fn write_response(response: &ChatResponse, created: u64) -> Bytes {
    let mut message = json!({
        "role": "assistant",
        "content": if response.text.is_empty() && !response.tool_calls.is_empty() {
            Value::Null
        } else {
            response.text.as_str().into()
        },
    });
    if !response.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls_to_wire(&response.tool_calls);
    }
    let body = json!({
        "id": response.id,
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason_to_wire(response.finish.reason),
        }],
        "usage": usage_to_wire(&response.usage),
    });
    Bytes::from(body.to_string())
}

fn usage_to_wire(usage: &Usage) -> Value {
    let mut wire = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    });
    // OpenAI has no field for cache writes: they stay in `prompt_tokens`, as input.
    if usage.prompt_tokens_details.is_some() {
        wire["prompt_tokens_details"] = json!({"cached_tokens": usage.cached_tokens()});
    }
    if usage.completion_tokens_details.is_some() {
        wire["completion_tokens_details"] = json!({"reasoning_tokens": usage.reasoning_tokens()});
    }
    wire
}

// ---------------------------------------------------------------------------------
// Streams: IR events to chunks (client side)

/// Writes IR stream events as `chat.completion.chunk` events.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Value>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl StreamEncoder {
    pub fn new(include_usage: bool, created: u64) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created,
            include_usage,
            usage: None,
        }
    }

    /// An encoder for the end of a stream whose start the provider wrote itself (its
    /// chunks passed through): what it writes carries the provider's `head`.
    pub fn continuing(head: Option<&StreamHead>, include_usage: bool) -> Self {
        let head = head.cloned().unwrap_or_default();
        Self {
            id: head.id,
            model: head.model,
            created: head.created,
            include_usage,
            usage: None,
        }
    }

    /// Appends the client events for `event` to `out`.
    pub fn encode(&mut self, event: StreamEvent, out: &mut BytesMut) {
        match event {
            StreamEvent::Start { id, model, usage } => {
                self.id = id;
                self.model = model;
                self.usage = usage;
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                };
                self.chunk(delta, None, out);
            }
            StreamEvent::Text(text) => {
                let delta = Delta {
                    content: Some(&text),
                    ..Delta::default()
                };
                self.chunk(delta, None, out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                let call = ToolCallDelta {
                    index,
                    id: Some(&id),
                    type_: Some("function"),
                    function: FunctionDelta {
                        name: Some(&name),
                        arguments: "",
                    },
                };
                let delta = Delta {
                    tool_calls: Some([call]),
                    ..Delta::default()
                };
                self.chunk(delta, None, out);
            }
            StreamEvent::ToolCallArguments { index, arguments } => {
                let call = ToolCallDelta {
                    index,
                    id: None,
                    type_: None,
                    function: FunctionDelta {
                        name: None,
                        arguments: &arguments,
                    },
                };
                let delta = Delta {
                    tool_calls: Some([call]),
                    ..Delta::default()
                };
                self.chunk(delta, None, out);
            }
            StreamEvent::Finish(finish) => {
                let reason = finish_reason_to_wire(finish.reason);
                self.chunk(Delta::default(), Some(reason), out);
            }
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Error(error) => write_data(out, &stream_error(&error)),
            StreamEvent::Done => {
                if self.include_usage {
                    let usage = self.usage.unwrap_or_default();
                    let chunk = Chunk {
                        id: &self.id,
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: &self.model,
                        choices: &[],
                        usage: Some(Some(usage_to_wire(&usage))),
                    };
                    write_data(out, &chunk);
                }
                out.put_slice(b"data: [DONE]\n\n");
            }
        }
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&'static str>, out: &mut BytesMut) {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            // With include_usage, OpenAI sends `"usage": null` on every content chunk.
            usage: self.include_usage.then_some(None),
        };
        write_data(out, &chunk);
    }
}

fn write_data(out: &mut BytesMut, value: &impl Serialize) {
    out.put_slice(b"data: ");
    // Serializing these types cannot fail: no maps with non-string keys, no NaN.
    let _ = serde_json::to_writer(out.writer(), value);
    out.put_slice(b"\n\n");
}

/// A mid-stream error as OpenAI's SDKs read it: a data event with an `error` object.
fn stream_error(error: &StreamError) -> Value {
    let (type_, code) = match error.kind {
        StreamErrorKind::Overloaded => ("server_error", "overloaded"),
        StreamErrorKind::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
        StreamErrorKind::Upstream => ("upstream_error", "upstream_stream_error"),
    };
    json!({"error": {"message": error.message, "type": type_, "param": null, "code": code}})
}

// ---------------------------------------------------------------------------------
// Streams: chunks to IR events (provider side)

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    created: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    choices: Vec<WireChunkChoice>,
    usage: Option<Usage>,
    #[serde(default, deserialize_with = "null_as_default")]
    x_groq: ProviderExtension,
    error: Option<WireStreamError>,
}

/// Where a provider puts a stream's usage besides `usage`: Groq sends it in
/// `x_groq.usage` on the finish chunk (console.groq.com/docs/api-reference).
#[derive(Deserialize, Default)]
pub(crate) struct ProviderExtension {
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default, deserialize_with = "null_as_default")]
    delta: WireDelta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireDelta {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    tool_calls: Vec<WireToolCallDelta>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default, deserialize_with = "null_as_default")]
    index: u32,
    id: Option<String>,
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireStreamError {
    #[serde(default, deserialize_with = "null_as_default")]
    message: String,
}

/// Reads `chat.completion.chunk` events into IR events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// The stream's identity, from its first chunk with an answer.
    head: Option<StreamHead>,
    refused: bool,
}

/// What every chunk of a stream repeats: its id, creation time and model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHead {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl StreamDecoder {
    /// The stream's id, creation time and model, once its first chunk arrived.
    pub fn head(&self) -> Option<&StreamHead> {
        self.head.as_ref()
    }

    /// The IR events for one upstream event's data.
    pub fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        if data == "[DONE]" {
            out.push(StreamEvent::Done);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<WireChunk>(data) else {
            out.push(StreamEvent::Error(StreamError::upstream(
                "upstream provider sent an unreadable stream event",
            )));
            return;
        };
        if let Some(error) = chunk.error {
            out.push(StreamEvent::Error(StreamError::upstream(error.message)));
            return;
        }
        // Azure opens with a content-filter chunk that has no id and no choices; the
        // answer starts with the first chunk that has either.
        let has_answer = !chunk.id.is_empty() || !chunk.choices.is_empty();
        if self.head.is_none() && has_answer {
            self.head = Some(StreamHead {
                id: chunk.id.clone(),
                created: chunk.created,
                model: chunk.model.clone(),
            });
            out.push(StreamEvent::Start {
                id: chunk.id,
                model: chunk.model,
                usage: None,
            });
        }
        for choice in chunk.choices.into_iter().take(1) {
            let delta = choice.delta;
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::Text(text));
            }
            if let Some(refusal) = delta.refusal.filter(|t| !t.is_empty()) {
                self.refused = true;
                out.push(StreamEvent::Text(refusal));
            }
            for call in delta.tool_calls {
                let function = call.function.unwrap_or(WireFunctionDelta {
                    name: None,
                    arguments: None,
                });
                if let Some(id) = call.id {
                    out.push(StreamEvent::ToolCallStart {
                        index: call.index,
                        id,
                        name: function.name.unwrap_or_default(),
                    });
                }
                if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
                    out.push(StreamEvent::ToolCallArguments {
                        index: call.index,
                        arguments,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason {
                out.push(StreamEvent::Finish(Finish {
                    reason: if self.refused {
                        FinishReason::ContentFilter
                    } else {
                        finish_reason_from_wire(Some(&reason))
                    },
                    stop_sequence: None,
                }));
            }
        }
        if let Some(usage) = chunk.usage.or(chunk.x_groq.usage) {
            out.push(StreamEvent::Usage(usage));
        }
    }
}

// ---------------------------------------------------------------------------------
// Errors

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorMessage,
}

#[derive(Deserialize)]
struct ErrorMessage {
    #[serde(default)]
    message: Option<String>,
}

/// The message of an OpenAI error body: `None` if the body is not one, `Some(None)`
/// if it is one without a message.
pub fn parse_error(body: &[u8]) -> Option<Option<String>> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error.message)
}

/// OpenAI's `{"error":{"message","type","param","code"}}` body.
pub fn write_error(message: &str, type_: &str, code: &str) -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            type_,
            param: None,
            code,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

#[cfg(test)]
mod tests;
