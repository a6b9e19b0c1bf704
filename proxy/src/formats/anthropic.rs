//! Anthropic's Messages API wire format, to and from the IR.
//!
//! Used both ways: as a client API (`POST /v1/messages`: requests in, messages and
//! stream events out) and as a provider API (requests out, messages and events in).

mod assembled;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    Turns, bad_request, split_system, tool_arguments, tool_definition, unsupported_fields,
};
use crate::error::ProxyError;
use crate::ir::Usage;
use crate::ir::chat::{
    ChatRequest, ChatResponse, Finish, FinishReason, Image, Message, Part, ResponseFormat, Role,
    StreamError, StreamErrorKind, StreamEvent, Tool, ToolCall, ToolChoice,
};
use crate::ir::tolerant::null_as_default;

pub use self::assembled::{StreamAssembler, message_as_stream};

// ---------------------------------------------------------------------------------
// Requests in (client side)

#[derive(Deserialize)]
struct WireRequest {
    messages: Vec<WireMessage>,
    system: Option<SystemPrompt>,
    max_tokens: Option<u64>,
    tools: Option<Vec<WireTool>>,
    tool_choice: Option<WireToolChoice>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    stop_sequences: Option<Vec<String>>,
    metadata: Option<WireMetadata>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

const ENVELOPE_FIELDS: &[&str] = &["model", "stream"];

#[derive(Deserialize)]
#[serde(untagged)]
enum SystemPrompt {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Deserialize)]
struct TextBlock {
    #[serde(rename = "type")]
    _type: TextType,
    text: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum TextType {
    Text,
}

#[derive(Deserialize)]
struct WireMessage {
    role: WireRole,
    content: WireContent,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum WireRole {
    User,
    Assistant,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: Option<WireContent>,
        #[serde(default)]
        is_error: bool,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Deserialize)]
struct WireTool {
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
    /// Set on Anthropic's server tools (web search, computer use), which only
    /// Anthropic can run.
    #[serde(rename = "type")]
    type_: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    None,
}

#[derive(Deserialize)]
struct WireMetadata {
    user_id: Option<String>,
}

/// Types a Messages API request. Fields and blocks the IR does not know are refused.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ProxyError> {
    let wire: WireRequest = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("invalid messages request: {e}")))?;
    unsupported_fields(&wire.other, ENVELOPE_FIELDS)?;
    if wire.messages.is_empty() {
        return Err(bad_request("'messages' must contain at least one message"));
    }

    let mut messages = Vec::with_capacity(wire.messages.len() + 1);
    match wire.system {
        Some(SystemPrompt::Text(text)) => messages.push(Message::text(Role::System, text)),
        Some(SystemPrompt::Blocks(blocks)) => messages.extend(
            blocks
                .into_iter()
                .map(|b| Message::text(Role::System, b.text)),
        ),
        None => {}
    }
    for message in wire.messages {
        messages_from_wire(message, &mut messages)?;
    }

    let mut tools = Vec::new();
    for tool in wire.tools.unwrap_or_default() {
        if let Some(type_) = tool.type_.filter(|t| t != "custom") {
            return Err(bad_request(format!(
                "tool type '{}' is an Anthropic server tool and cannot be translated",
                super::truncate(&type_, 64)
            )));
        }
        tools.push(Tool {
            name: tool.name,
            description: tool.description,
            parameters: tool.input_schema,
        });
    }
    let (tool_choice, parallel_tool_calls) = match wire.tool_choice {
        None => (None, None),
        Some(WireToolChoice::None) => (Some(ToolChoice::None), None),
        Some(WireToolChoice::Auto {
            disable_parallel_tool_use,
        }) => (Some(ToolChoice::Auto), parallel(disable_parallel_tool_use)),
        Some(WireToolChoice::Any {
            disable_parallel_tool_use,
        }) => (
            Some(ToolChoice::Required),
            parallel(disable_parallel_tool_use),
        ),
        Some(WireToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }) => (
            Some(ToolChoice::Tool(name)),
            parallel(disable_parallel_tool_use),
        ),
    };

    Ok(ChatRequest {
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        max_tokens: wire.max_tokens,
        temperature: wire.temperature,
        top_p: wire.top_p,
        top_k: wire.top_k,
        stop: wire.stop_sequences.unwrap_or_default(),
        user: wire.metadata.and_then(|m| m.user_id),
        ..ChatRequest::default()
    })
}

fn parallel(disable_parallel_tool_use: bool) -> Option<bool> {
    disable_parallel_tool_use.then_some(false)
}

/// One Anthropic message becomes one IR message, except that each tool result becomes
/// its own `Role::Tool` message (OpenAI's shape), ahead of the text beside it.
fn messages_from_wire(message: WireMessage, out: &mut Vec<Message>) -> Result<(), ProxyError> {
    let role = match message.role {
        WireRole::User => Role::User,
        WireRole::Assistant => Role::Assistant,
    };
    let blocks = match message.content {
        WireContent::Text(text) => {
            out.push(Message::text(role, text));
            return Ok(());
        }
        WireContent::Blocks(blocks) => blocks,
    };
    let mut current = Message {
        content: Vec::new(),
        ..Message::text(role, "")
    };
    for block in blocks {
        match block {
            WireBlock::Text { text } => current.content.push(Part::Text(text)),
            WireBlock::Image { source } => current.content.push(Part::Image(image(source))),
            WireBlock::ToolUse { id, name, input } if role == Role::Assistant => {
                current.tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: input.to_string(),
                });
            }
            WireBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } if role == Role::User => {
                let content = match content {
                    None => Vec::new(),
                    Some(WireContent::Text(text)) => vec![Part::Text(text)],
                    Some(WireContent::Blocks(blocks)) => blocks
                        .into_iter()
                        .map(|b| match b {
                            WireBlock::Text { text } => Ok(Part::Text(text)),
                            WireBlock::Image { source } => Ok(Part::Image(image(source))),
                            _ => Err(bad_request(
                                "tool_result content may hold only text and image blocks",
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                };
                out.push(Message {
                    content,
                    tool_call_id: Some(tool_use_id),
                    is_error,
                    ..Message::text(Role::Tool, "")
                });
            }
            WireBlock::ToolUse { .. } => {
                return Err(bad_request("tool_use blocks belong in assistant messages"));
            }
            WireBlock::ToolResult { .. } => {
                return Err(bad_request("tool_result blocks belong in user messages"));
            }
        }
    }
    if !current.content.is_empty() || !current.tool_calls.is_empty() {
        out.push(current);
    }
    Ok(())
}

fn image(source: ImageSource) -> Image {
    match source {
        ImageSource::Base64 { media_type, data } => Image::Base64 { media_type, data },
        ImageSource::Url { url } => Image::Url(url),
    }
}

// ---------------------------------------------------------------------------------
// Requests out (provider side)

/// Writes `request` as a Messages API body for `model`. Refuses what the Messages API
/// cannot express.
pub fn write_request(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    default_max_tokens: u32,
) -> Result<Bytes, ProxyError> {
    refuse_unexpressible(request)?;
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert(
        "max_tokens".into(),
        request
            .max_tokens
            .unwrap_or(default_max_tokens.into())
            .into(),
    );

    let (system, conversation) = split_system(&request.messages);
    if !system.is_empty() {
        let mut blocks = Vec::new();
        for message in system {
            if message.content.iter().any(|p| matches!(p, Part::Image(_))) {
                return Err(bad_request(
                    "anthropic providers take only text in system messages",
                ));
            }
            blocks.push(json!({"type": "text", "text": message.joined_text()}));
        }
        body.insert("system".into(), blocks.into());
    }
    body.insert("messages".into(), messages_to_wire(conversation)?.into());

    if !request.tools.is_empty() {
        let empty = json!({"type": "object", "properties": {}});
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| tool_definition(tool, "input_schema", Some(empty.clone())))
            .collect();
        body.insert("tools".into(), tools.into());
    }
    let disable_parallel = request.parallel_tool_calls == Some(false);
    let choice = match (&request.tool_choice, disable_parallel) {
        (None, false) => None,
        (None | Some(ToolChoice::Auto), _) => Some(json!({"type": "auto"})),
        (Some(ToolChoice::None), _) => Some(json!({"type": "none"})),
        (Some(ToolChoice::Required), _) => Some(json!({"type": "any"})),
        (Some(ToolChoice::Tool(name)), _) => Some(json!({"type": "tool", "name": name})),
    };
    if let Some(mut choice) = choice {
        if disable_parallel && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = true.into();
        }
        body.insert("tool_choice".into(), choice);
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(k) = request.top_k {
        body.insert("top_k".into(), k.into());
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), request.stop.clone().into());
    }
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Ok(Bytes::from(Value::Object(body).to_string()))
}

fn refuse_unexpressible(request: &ChatRequest) -> Result<(), ProxyError> {
    let refuse = |what: &str| {
        Err(bad_request(format!(
            "{what} is not supported by anthropic providers"
        )))
    };
    if request.n.is_some_and(|n| n != 1) {
        return refuse("'n' other than 1");
    }
    if request.seed.is_some() {
        return refuse("'seed'");
    }
    if request.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse("'presence_penalty'");
    }
    if request.frequency_penalty.is_some_and(|p| p != 0.0) {
        return refuse("'frequency_penalty'");
    }
    match request.response_format {
        None | Some(ResponseFormat::Text) => Ok(()),
        Some(_) => {
            refuse("'response_format' JSON mode (ask for JSON in the prompt, or use a tool)")
        }
    }
}

/// IR messages after the system prompt. Tool results go into user turns as
/// `tool_result` blocks; consecutive turns of one role are merged, as the Messages API
/// wants user and assistant turns to alternate.
fn messages_to_wire(messages: &[Message]) -> Result<Vec<Value>, ProxyError> {
    let mut turns = Turns::default();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System => {
                return Err(bad_request(
                    "anthropic providers take system messages only at the start of the conversation",
                ));
            }
            Role::User => ("user", content_blocks(&message.content)),
            Role::Tool => {
                let mut result = json!({
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id.as_deref().unwrap_or_default(),
                    "content": content_blocks(&message.content),
                });
                if message.is_error {
                    result["is_error"] = true.into();
                }
                ("user", vec![result])
            }
            Role::Assistant => {
                let mut blocks = content_blocks(&message.content);
                for call in &message.tool_calls {
                    let input = tool_arguments(call)?;
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                ("assistant", blocks)
            }
        };
        turns.push(role, blocks);
    }
    Ok(turns.into_json("content"))
}

fn content_blocks(parts: &[Part]) -> Vec<Value> {
    parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|part| match part {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::Image(Image::Url(url)) => {
                json!({"type": "image", "source": {"type": "url", "url": url}})
            }
            Part::Image(Image::Base64 { media_type, data }) => json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }),
        })
        .collect()
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
    content: Vec<WireResponseBlock>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireResponseBlock {
    Text {
        #[serde(default, deserialize_with = "null_as_default")]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        /// `Value::Null` when absent or null: no arguments.
        #[serde(default)]
        input: Value,
    },
    /// Thinking and server-tool blocks: the IR has no place for them.
    #[serde(other)]
    Other,
}

/// Anthropic's usage. `input_tokens` excludes cache reads and writes.
#[derive(Deserialize, Debug, Default, Clone, Copy)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    /// The writes by lifetime (in answers since 1-hour caching).
    cache_creation: Option<WireCacheCreation>,
}

#[derive(Deserialize, Debug, Default, Clone, Copy)]
struct WireCacheCreation {
    ephemeral_1h_input_tokens: Option<u64>,
}

impl WireUsage {
    fn merge(&mut self, newer: WireUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation = newer.cache_creation.or(self.cache_creation);
    }

    /// IR usage (see `ir::usage`): input counts every prompt token, cache reads and
    /// writes included, each also told apart. Saturating: counts come from a provider.
    fn to_ir(self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let writes = self.cache_creation_input_tokens.unwrap_or(0);
        let input = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached)
            .saturating_add(writes);
        let writes_1h = self
            .cache_creation
            .and_then(|c| c.ephemeral_1h_input_tokens)
            .unwrap_or(0);
        Usage::new(input, self.output_tokens.unwrap_or(0), cached)
            .with_cache_writes(writes)
            .with_cache_writes_1h(writes_1h)
    }
}

/// The usage of a whole Messages API response, for an answer passed through as is.
pub fn response_usage(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct UsageOnly {
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage
        .map(WireUsage::to_ir)
}

/// Anthropic's usage from the IR's: `input_tokens` without cache reads and writes,
/// which have their own fields. Reasoning stays in `output_tokens`, as Anthropic counts
/// thinking.
fn usage_to_wire(usage: &Usage) -> Value {
    let mut wire = json!({
        "input_tokens": usage.uncached_input_tokens(),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens(),
        "cache_read_input_tokens": usage.cached_tokens(),
    });
    let writes = usage.cache_write_tokens();
    if writes > 0 {
        let long = usage.cache_write_1h_tokens().min(writes);
        wire["cache_creation"] = json!({
            "ephemeral_5m_input_tokens": writes - long,
            "ephemeral_1h_input_tokens": long,
        });
    }
    wire
}

/// Reads a Messages API response.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ProxyError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| super::unreadable(&e))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in wire.content {
        match block {
            WireResponseBlock::Text { text: t } => text.push_str(&t),
            WireResponseBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: match input {
                    Value::Null => "{}".to_string(),
                    input => input.to_string(),
                },
            }),
            WireResponseBlock::Other => {}
        }
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        text,
        tool_calls,
        finish: finish_from_wire(wire.stop_reason.as_deref(), wire.stop_sequence),
        usage: wire.usage.to_ir(),
    })
}

fn finish_from_wire(reason: Option<&str>, stop_sequence: Option<String>) -> Finish {
    let reason = match reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn
        _ => FinishReason::Stop,
    };
    Finish {
        reason,
        stop_sequence,
    }
}

fn stop_reason_to_wire(finish: &Finish) -> &'static str {
    match finish.reason {
        FinishReason::Stop if finish.stop_sequence.is_some() => "stop_sequence",
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Writes `response` as a Messages API response.
pub fn write_response(response: &ChatResponse) -> Bytes {
    let mut content = Vec::new();
    if !response.text.is_empty() {
        content.push(json!({"type": "text", "text": response.text}));
    }
    for call in &response.tool_calls {
        content.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": tool_input(&call.arguments),
        }));
    }
    let body = json!({
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason_to_wire(&response.finish),
        "stop_sequence": response.finish.stop_sequence,
        "usage": usage_to_wire(&response.usage),
    });
    Bytes::from(body.to_string())
}

/// A tool call's arguments as the JSON object Anthropic's `input` must be. Arguments
/// that are not an object (a model's malformed output) are kept under `arguments`.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({"arguments": arguments}),
    }
}

// ---------------------------------------------------------------------------------
// Streams: IR events to Messages API events (client side)

/// Writes IR stream events as Messages API stream events.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    /// Index of the next content block.
    next_block: u32,
    /// The open content block: `None` for text, `Some(tool index)` for a tool call.
    open: Option<Option<u32>>,
    /// Content block index by tool call index.
    tool_blocks: Vec<(u32, u32)>,
    finish: Option<Finish>,
    usage: Option<Usage>,
}

impl StreamEncoder {
    /// An encoder for the end of a stream whose events the provider wrote itself (passed
    /// through): `open_block`, the content block it left open, is closed at the end.
    pub fn continuing(open_block: Option<u32>) -> Self {
        match open_block {
            Some(index) => Self {
                next_block: index.saturating_add(1),
                open: Some(None),
                ..Self::default()
            },
            None => Self::default(),
        }
    }

    pub fn encode(&mut self, event: StreamEvent, out: &mut BytesMut) {
        match event {
            StreamEvent::Start { id, model, usage } => {
                self.usage = usage;
                let usage = usage.unwrap_or_default();
                let message = json!({
                    "type": "message_start",
                    "message": {
                        "id": id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": usage_to_wire(&usage),
                    },
                });
                write_event(out, "message_start", &message);
            }
            StreamEvent::Text(text) => {
                if self.open != Some(None) {
                    self.close_block(out);
                    let index = self.open_block(None);
                    write_event(
                        out,
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "text", "text": ""}}),
                    );
                }
                let index = self.next_block - 1;
                write_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": text}}),
                );
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.close_block(out);
                let block = self.open_block(Some(index));
                self.tool_blocks.push((index, block));
                write_event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": block,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                );
            }
            StreamEvent::ToolCallArguments { index, arguments } => {
                let Some(&(_, block)) = self.tool_blocks.iter().find(|(t, _)| *t == index) else {
                    return;
                };
                write_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                );
            }
            StreamEvent::Finish(finish) => self.finish = Some(finish),
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Error(error) => {
                write_event(out, "error", &error_body(&error));
            }
            StreamEvent::Done => {
                self.close_block(out);
                let finish = self.finish.take().unwrap_or(Finish {
                    reason: FinishReason::Stop,
                    stop_sequence: None,
                });
                let usage = self.usage.unwrap_or_default();
                write_event(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason_to_wire(&finish),
                            "stop_sequence": finish.stop_sequence},
                        "usage": usage_to_wire(&usage)}),
                );
                write_event(out, "message_stop", &json!({"type": "message_stop"}));
            }
        }
    }

    fn open_block(&mut self, tool: Option<u32>) -> u32 {
        self.open = Some(tool);
        self.next_block += 1;
        self.next_block - 1
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if self.open.take().is_some() {
            let index = self.next_block - 1;
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }
}

fn write_event(out: &mut BytesMut, name: &str, data: &impl Serialize) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    // Serializing a `Value` cannot fail.
    let _ = serde_json::to_writer(out.writer(), data);
    out.put_slice(b"\n\n");
}

fn error_body(error: &StreamError) -> Value {
    let type_ = match error.kind {
        StreamErrorKind::Overloaded => "overloaded_error",
        StreamErrorKind::RateLimited => "rate_limit_error",
        StreamErrorKind::Upstream => "api_error",
    };
    json!({"type": "error", "error": {"type": type_, "message": error.message}})
}

// ---------------------------------------------------------------------------------
// Streams: Messages API events to IR events (provider side)

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireStartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        delta: WireMessageDelta,
        #[serde(default, deserialize_with = "null_as_default")]
        usage: WireUsage,
    },
    MessageStop {},
    Ping {},
    Error {
        error: WireError,
    },
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireStartBlock {
    Text {
        #[serde(default, deserialize_with = "null_as_default")]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        #[serde(default, deserialize_with = "null_as_default")]
        text: String,
    },
    InputJsonDelta {
        #[serde(default, deserialize_with = "null_as_default")]
        partial_json: String,
    },
    /// Thinking and signature deltas: the IR has no place for them.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessageDelta {
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct WireError {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub type_: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
}

/// Reads Messages API stream events into IR events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Tool call index by content block index.
    tool_blocks: Vec<(u32, u32)>,
    usage: Option<WireUsage>,
    /// The content block started and not yet stopped, of any type.
    open_block: Option<u32>,
}

impl StreamDecoder {
    /// The content block left open by the events read so far: what a gateway that ends
    /// the stream early must close.
    pub fn open_block(&self) -> Option<u32> {
        self.open_block
    }

    /// The IR events for one upstream event's data.
    pub fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        let event = match serde_json::from_str::<WireEvent>(data) {
            Ok(event) => event,
            // An event type added after this was written: skip it, as Anthropic asks.
            Err(_) if is_unknown_event(data) => return,
            Err(_) => {
                out.push(StreamEvent::Error(StreamError::upstream(
                    "upstream provider sent an unreadable stream event",
                )));
                return;
            }
        };
        match event {
            WireEvent::MessageStart { message } => {
                self.usage = Some(message.usage);
                out.push(StreamEvent::Start {
                    id: message.id,
                    model: message.model,
                    usage: Some(message.usage.to_ir()),
                });
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.open_block = Some(index);
                match content_block {
                    WireStartBlock::Text { text } if !text.is_empty() => {
                        out.push(StreamEvent::Text(text));
                    }
                    WireStartBlock::ToolUse { id, name } => {
                        let tool = self.tool_blocks.len() as u32;
                        self.tool_blocks.push((index, tool));
                        out.push(StreamEvent::ToolCallStart {
                            index: tool,
                            id,
                            name,
                        });
                    }
                    _ => {}
                }
            }
            WireEvent::ContentBlockDelta { index, delta } => match delta {
                WireDelta::TextDelta { text } if !text.is_empty() => {
                    out.push(StreamEvent::Text(text));
                }
                WireDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    if let Some(&(_, tool)) = self.tool_blocks.iter().find(|(b, _)| *b == index) {
                        out.push(StreamEvent::ToolCallArguments {
                            index: tool,
                            arguments: partial_json,
                        });
                    }
                }
                _ => {}
            },
            WireEvent::MessageDelta { delta, usage } => {
                let merged = self.usage.get_or_insert_default();
                merged.merge(usage);
                out.push(StreamEvent::Usage(merged.to_ir()));
                if delta.stop_reason.is_some() {
                    out.push(StreamEvent::Finish(finish_from_wire(
                        delta.stop_reason.as_deref(),
                        delta.stop_sequence,
                    )));
                }
            }
            WireEvent::MessageStop {} => out.push(StreamEvent::Done),
            WireEvent::Error { error } => out.push(StreamEvent::Error(stream_error(error))),
            WireEvent::ContentBlockStop {} => self.open_block = None,
            WireEvent::Ping {} => {}
        }
    }
}

fn is_unknown_event(data: &str) -> bool {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        type_: String,
    }
    serde_json::from_str::<Typed>(data).is_ok_and(|t| {
        !matches!(
            t.type_.as_str(),
            "message_start"
                | "content_block_start"
                | "content_block_delta"
                | "content_block_stop"
                | "message_delta"
                | "message_stop"
                | "ping"
                | "error"
        )
    })
}

fn stream_error(error: WireError) -> StreamError {
    let kind = match error.type_.as_str() {
        "overloaded_error" => StreamErrorKind::Overloaded,
        "rate_limit_error" => StreamErrorKind::RateLimited,
        _ => StreamErrorKind::Upstream,
    };
    StreamError {
        kind,
        message: error.message,
    }
}

// ---------------------------------------------------------------------------------
// Errors

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: WireError,
}

/// The message of an Anthropic error body, if it is one.
pub fn parse_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error.message)
}

/// Anthropic's `{"type":"error","error":{"type","message"}}` body.
pub fn write_error(type_: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "error", "error": {"type": type_, "message": message}}))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
