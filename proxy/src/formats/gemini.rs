//! Google's Generative Language API (Gemini) wire format, to and from the IR.
//!
//! Provider side here: `generateContent` requests out, `GenerateContentResponse`s in,
//! whole or streamed (`streamGenerateContent?alt=sse` sends one response per event).
//! Client side (Gemini's API served to clients) in `client`.

mod assembled;
mod client;

pub use self::assembled::{StreamAssembler, response_as_stream};
pub use self::client::{StreamEncoder, parse_request, response_usage, write_error, write_response};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Turns, bad_request, split_system, tool_arguments, tool_definition};
use crate::error::ProxyError;
use crate::ir::Usage;
use crate::ir::chat::{
    ChatRequest, ChatResponse, Finish, FinishReason, Image, Message, Part, ResponseFormat, Role,
    StreamError, StreamErrorKind, StreamEvent, ToolCall, ToolChoice,
};
use crate::ir::tolerant::null_as_default;

// ---------------------------------------------------------------------------------
// Requests out

/// The value Google documents for function calls replayed without their thought
/// signature (ai.google.dev/gemini-api/docs/thought-signatures).
const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Writes `request` as a `generateContent` body. Refuses what Gemini cannot express.
pub fn write_request(request: &ChatRequest) -> Result<Bytes, ProxyError> {
    let mut body = Map::new();

    let (system, conversation) = split_system(&request.messages);
    if !system.is_empty() {
        let mut parts = Vec::new();
        for message in system {
            parts.extend(parts_to_wire(&message.content)?);
        }
        body.insert("systemInstruction".into(), json!({"parts": parts}));
    }
    body.insert("contents".into(), contents(conversation)?.into());

    if !request.tools.is_empty() {
        // JSON Schema as the client wrote it; `parameters` would take only Gemini's
        // OpenAPI subset.
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| tool_definition(tool, "parametersJsonSchema", None))
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if request.parallel_tool_calls == Some(false) {
        return Err(bad_request(
            "'parallel_tool_calls: false' is not supported by gemini providers",
        ));
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }

    let mut generation = Map::new();
    let mut set = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            generation.insert(name.to_string(), value);
        }
    };
    set("temperature", request.temperature.map(Value::from));
    set("topP", request.top_p.map(Value::from));
    set("topK", request.top_k.map(Value::from));
    set("maxOutputTokens", request.max_tokens.map(Value::from));
    set(
        "stopSequences",
        (!request.stop.is_empty()).then(|| request.stop.clone().into()),
    );
    set("candidateCount", request.n.map(Value::from));
    set("seed", request.seed.map(Value::from));
    set("presencePenalty", request.presence_penalty.map(Value::from));
    set(
        "frequencyPenalty",
        request.frequency_penalty.map(Value::from),
    );
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            set("responseMimeType", Some("application/json".into()));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            set("responseMimeType", Some("application/json".into()));
            set("responseJsonSchema", schema.clone());
        }
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(bad_request(
            "'n' other than 1 is not supported when translating to gemini providers",
        ));
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), generation.into());
    }
    // `user` has no Gemini field; it is an abuse-monitoring hint, not part of the
    // answer, so it is left out rather than refused.
    Ok(Bytes::from(Value::Object(body).to_string()))
}

/// IR messages after the system instruction, as Gemini `contents`: assistant turns
/// have role `model`; tool results become `functionResponse` parts in user turns,
/// named after the call they answer; consecutive turns of one role are merged.
fn contents(messages: &[Message]) -> Result<Vec<Value>, ProxyError> {
    let mut turns = Turns::default();
    for (i, message) in messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System => {
                return Err(bad_request(
                    "gemini providers take system messages only at the start of the conversation",
                ));
            }
            Role::User => ("user", parts_to_wire(&message.content)?),
            Role::Assistant => {
                let mut parts = parts_to_wire(&message.content)?;
                for call in &message.tool_calls {
                    let args = tool_arguments(call)?;
                    // Gemini 3 wants the thought signature it sent with each call back;
                    // OpenAI and Anthropic clients cannot keep it, so the history
                    // carries Google's documented placeholder instead.
                    parts.push(json!({
                        "functionCall": {"name": call.name, "args": args},
                        "thoughtSignature": SKIP_THOUGHT_SIGNATURE,
                    }));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = called_function(&messages[..i], id).ok_or_else(|| {
                    bad_request(format!(
                        "tool message answers call '{}', which no earlier assistant message made",
                        super::truncate(id, 64)
                    ))
                })?;
                let text = message.joined_text();
                // Gemini wants an object; a result that is not one is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        turns.push(role, parts);
    }
    Ok(turns.into_json("parts"))
}

/// The function name of the latest assistant tool call with `id`.
fn called_function<'a>(earlier: &'a [Message], id: &str) -> Option<&'a str> {
    earlier
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter())
        .find(|call| call.id == id)
        .map(|call| call.name.as_str())
}

fn parts_to_wire(parts: &[Part]) -> Result<Vec<Value>, ProxyError> {
    parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|part| match part {
            Part::Text(text) => Ok(json!({"text": text})),
            Part::Image(Image::Base64 { media_type, data }) => {
                Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}))
            }
            Part::Image(Image::Url(_)) => Err(bad_request(
                "gemini providers take images only as base64 (data: URLs); remote image URLs cannot be translated",
            )),
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Responses in

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    candidates: Vec<WireCandidate>,
    usage_metadata: Option<WireUsage>,
    model_version: Option<String>,
    response_id: Option<String>,
    prompt_feedback: Option<PromptFeedback>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    content: Option<WireContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default, deserialize_with = "null_as_default")]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    text: Option<String>,
    function_call: Option<WireFunctionCall>,
    /// A thought summary, not part of the answer.
    #[serde(default, deserialize_with = "null_as_default")]
    thought: bool,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

/// Gemini's usage: `promptTokenCount` includes cached tokens; thinking tokens are
/// output tokens the client pays for.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default, deserialize_with = "null_as_default")]
    prompt_token_count: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    candidates_token_count: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    thoughts_token_count: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    cached_content_token_count: u64,
}

impl WireUsage {
    /// IR usage (see `ir::usage`): output adds the thoughts, which Gemini bills as
    /// output but leaves out of `candidatesTokenCount`. Saturating: counts come from a
    /// provider.
    fn to_ir(self) -> Usage {
        Usage::new(
            self.prompt_token_count,
            self.candidates_token_count
                .saturating_add(self.thoughts_token_count),
            self.cached_content_token_count,
        )
        .with_reasoning(self.thoughts_token_count)
    }
}

#[derive(Deserialize)]
pub(crate) struct WireError {
    #[serde(default, deserialize_with = "null_as_default")]
    pub code: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
}

/// Reads a `generateContent` response (the first candidate).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ProxyError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| super::unreadable(&e))?;
    if wire.error.is_some() {
        return Err(ProxyError::UpstreamProtocol);
    }
    let mut rng = fastrand::Rng::new();
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut finish_reason = None;
    if let Some(candidate) = wire.candidates.into_iter().next() {
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            read_part(part, &mut text, &mut tool_calls, &mut rng);
        }
        finish_reason = candidate.finish_reason;
    }
    let blocked = wire.prompt_feedback.and_then(|f| f.block_reason).is_some();
    Ok(ChatResponse {
        id: wire.response_id.unwrap_or_else(|| new_id(&mut rng)),
        model: wire.model_version.unwrap_or_default(),
        finish: finish(finish_reason.as_deref(), !tool_calls.is_empty(), blocked),
        text,
        tool_calls,
        usage: wire.usage_metadata.unwrap_or_default().to_ir(),
    })
}

fn read_part(
    part: WirePart,
    text: &mut String,
    tool_calls: &mut Vec<ToolCall>,
    rng: &mut fastrand::Rng,
) {
    if part.thought {
        return;
    }
    if let Some(t) = part.text {
        text.push_str(&t);
    }
    if let Some(call) = part.function_call {
        tool_calls.push(tool_call(call, rng));
    }
}

/// Gemini sends a call's arguments whole, as an object, and often without an id; the
/// gateway makes one up, as OpenAI and Anthropic clients need one to answer the call.
fn tool_call(call: WireFunctionCall, rng: &mut fastrand::Rng) -> ToolCall {
    ToolCall {
        id: call
            .id
            .unwrap_or_else(|| format!("call_{}", random_suffix(rng))),
        name: call.name,
        arguments: call.args.unwrap_or_else(|| json!({})).to_string(),
    }
}

fn finish(reason: Option<&str>, called_tools: bool, blocked: bool) -> Finish {
    let reason = match reason {
        _ if blocked => FinishReason::ContentFilter,
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => FinishReason::ContentFilter,
        _ if called_tools => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    Finish {
        reason,
        stop_sequence: None,
    }
}

fn new_id(rng: &mut fastrand::Rng) -> String {
    format!("gemini-{}", random_suffix(rng))
}

/// Ids only need to be unique within a conversation, not secret.
fn random_suffix(rng: &mut fastrand::Rng) -> String {
    (0..24).map(|_| rng.alphanumeric()).collect()
}

// ---------------------------------------------------------------------------------
// Streams in

/// Reads streamed `GenerateContentResponse`s into IR events. The stream has no end
/// marker: it is complete when it closes after a finish reason.
#[derive(Debug)]
pub struct StreamDecoder {
    started: bool,
    tool_calls: u32,
    finished: bool,
    /// Source of the ids Gemini leaves out.
    rng: fastrand::Rng,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::with_rng(fastrand::Rng::new())
    }
}

impl StreamDecoder {
    pub fn with_rng(rng: fastrand::Rng) -> Self {
        Self {
            started: false,
            tool_calls: 0,
            finished: false,
            rng,
        }
    }

    /// The IR events for one upstream event's data.
    pub fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        let Ok(wire) = serde_json::from_str::<WireResponse>(data) else {
            out.push(StreamEvent::Error(StreamError::upstream(
                "upstream provider sent an unreadable stream event",
            )));
            return;
        };
        if let Some(error) = wire.error {
            out.push(StreamEvent::Error(stream_error(&error)));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: wire.response_id.unwrap_or_else(|| new_id(&mut self.rng)),
                model: wire.model_version.unwrap_or_default(),
                usage: None,
            });
        }
        let mut finish_reason = None;
        if let Some(candidate) = wire.candidates.into_iter().next() {
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                let mut text = String::new();
                let mut calls = Vec::new();
                read_part(part, &mut text, &mut calls, &mut self.rng);
                if !text.is_empty() {
                    out.push(StreamEvent::Text(text));
                }
                for call in calls {
                    let index = self.tool_calls;
                    self.tool_calls += 1;
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: call.id,
                        name: call.name,
                    });
                    out.push(StreamEvent::ToolCallArguments {
                        index,
                        arguments: call.arguments,
                    });
                }
            }
            finish_reason = candidate.finish_reason;
        }
        if let Some(usage) = wire.usage_metadata {
            out.push(StreamEvent::Usage(usage.to_ir()));
        }
        let blocked = wire.prompt_feedback.and_then(|f| f.block_reason).is_some();
        if (finish_reason.is_some() || blocked) && !self.finished {
            self.finished = true;
            out.push(StreamEvent::Finish(finish(
                finish_reason.as_deref(),
                self.tool_calls > 0,
                blocked,
            )));
        }
    }

    /// The upstream closed the stream: done if it had finished, otherwise cut short.
    pub fn end(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            out.push(StreamEvent::Done);
        }
    }
}

fn stream_error(error: &WireError) -> StreamError {
    let kind = match (error.code, error.status.as_str()) {
        (503, _) | (_, "UNAVAILABLE") => StreamErrorKind::Overloaded,
        (429, _) | (_, "RESOURCE_EXHAUSTED") => StreamErrorKind::RateLimited,
        _ => StreamErrorKind::Upstream,
    };
    StreamError {
        kind,
        message: error.message.clone(),
    }
}

// ---------------------------------------------------------------------------------
// Errors

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: WireError,
}

/// The message of a Google API error body, if it is one.
pub fn parse_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error.message)
}

/// Whether a 400 is Google's way of saying the API key is wrong.
pub fn is_bad_key(body: &[u8]) -> bool {
    body.windows(b"API_KEY_INVALID".len())
        .any(|w| w == b"API_KEY_INVALID")
}

#[cfg(test)]
mod tests;
