//! Gemini as a client API: `generateContent` requests read into the IR, answers and
//! stream events written as `GenerateContentResponse`s, errors in Google's format, and
//! the usage of answers passed through whole from Gemini providers.
//!
//! A child of the provider side so that both read usage (`WireUsage`) one way.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::{bad_request, truncate, unsupported_fields};
use super::WireUsage;
use crate::error::ProxyError;
use crate::ir::Usage;
use crate::ir::chat::{
    ChatRequest, ChatResponse, Finish, FinishReason, Image, Message, Part, ResponseFormat, Role,
    StreamError, StreamErrorKind, StreamEvent, Tool, ToolCall, ToolChoice,
};

// ---------------------------------------------------------------------------------
// Requests in

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InRequest {
    contents: Option<Vec<InContent>>,
    system_instruction: Option<InContent>,
    tools: Option<Vec<InTool>>,
    tool_config: Option<InToolConfig>,
    generation_config: Option<InGenerationConfig>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Fields of the request read elsewhere: the model is the path's (the REST API also
/// allows it in the body).
const ENVELOPE_FIELDS: &[&str] = &["model"];

#[derive(Deserialize)]
struct InContent {
    role: Option<String>,
    parts: Option<Vec<InPart>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InPart {
    text: Option<String>,
    inline_data: Option<InBlob>,
    function_call: Option<InFunctionCall>,
    function_response: Option<InFunctionResponse>,
    /// A thought summary the model wrote: not part of the conversation (Gemini itself
    /// does not read thoughts back), so it is left out.
    thought: Option<bool>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Part fields that carry nothing another provider could use: Gemini's thought
/// signatures only mean something to Gemini.
const PART_IGNORED: &[&str] = &["thoughtSignature"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InBlob {
    mime_type: String,
    data: String,
}

#[derive(Deserialize)]
struct InFunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
struct InFunctionResponse {
    id: Option<String>,
    name: String,
    response: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InTool {
    function_declarations: Option<Vec<InDeclaration>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InDeclaration {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    parameters_json_schema: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InToolConfig {
    function_calling_config: Option<InFunctionCallingConfig>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InFunctionCallingConfig {
    mode: Option<String>,
    allowed_function_names: Option<Vec<String>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InGenerationConfig {
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// A number: Google's SDKs type it as a float.
    top_k: Option<f64>,
    max_output_tokens: Option<u64>,
    stop_sequences: Option<Vec<String>>,
    candidate_count: Option<u64>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    response_mime_type: Option<String>,
    response_schema: Option<Value>,
    response_json_schema: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Reads a `generateContent` body into the IR. Refuses what the IR cannot carry,
/// naming it.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ProxyError> {
    let wire: InRequest = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("invalid generateContent request: {e}")))?;
    unsupported_fields(&wire.other, ENVELOPE_FIELDS)?;
    let contents = wire.contents.unwrap_or_default();
    if contents.is_empty() {
        return Err(bad_request("'contents' must contain at least one content"));
    }

    let mut messages = Vec::with_capacity(contents.len() + 1);
    if let Some(system) = wire.system_instruction {
        unsupported_fields(&system.other, &["role"])?;
        for part in system.parts.unwrap_or_default() {
            unsupported_fields(&part.other, PART_IGNORED)?;
            match part.text {
                Some(text) if part.inline_data.is_none() => {
                    messages.push(Message::text(Role::System, text))
                }
                _ => {
                    return Err(bad_request(
                        "'systemInstruction' can only be translated with text parts",
                    ));
                }
            }
        }
    }
    let mut calls = Calls::default();
    for content in contents {
        read_content(content, &mut calls, &mut messages)?;
    }

    let mut tools = Vec::new();
    for tool in wire.tools.unwrap_or_default() {
        // Google's own tools (googleSearch, codeExecution, urlContext...) run at Google.
        unsupported_fields(&tool.other, &[])?;
        for declaration in tool.function_declarations.unwrap_or_default() {
            tools.push(read_declaration(declaration)?);
        }
    }

    let mut request = ChatRequest {
        messages,
        tools,
        tool_choice: match wire.tool_config {
            Some(config) => tool_choice(config)?,
            None => None,
        },
        ..ChatRequest::default()
    };
    if let Some(config) = wire.generation_config {
        generation_config(config, &mut request)?;
    }
    Ok(request)
}

/// The function calls of the history so far, to name the call each result answers:
/// Gemini matches results to calls by name, and ids are optional.
#[derive(Default)]
struct Calls {
    /// Id, function name, whether a result answered it yet.
    made: Vec<(String, String, bool)>,
}

impl Calls {
    fn call(&mut self, id: Option<String>, name: &str) -> String {
        // Made up ids only need to be unique within the request.
        let id = id.unwrap_or_else(|| format!("call_{}", self.made.len()));
        self.made.push((id.clone(), name.to_string(), false));
        id
    }

    /// The id of the call a result answers: its own, else the first unanswered call of
    /// that function.
    fn answer(&mut self, id: Option<String>, name: &str) -> Result<String, ProxyError> {
        let found = match &id {
            Some(id) => self.made.iter_mut().find(|(made, ..)| made == id),
            None => self
                .made
                .iter_mut()
                .find(|(_, made, answered)| made == name && !answered),
        };
        match (found, id) {
            (Some((made, _, answered)), _) => {
                *answered = true;
                Ok(made.clone())
            }
            // A result for a call made outside this history keeps its id.
            (None, Some(id)) => Ok(id),
            (None, None) => Err(bad_request(format!(
                "functionResponse '{}' answers no earlier functionCall of that name",
                truncate(name, 64)
            ))),
        }
    }
}

/// One content as IR messages: a `model` content is one assistant turn; a `user`
/// content is user turns, with each `functionResponse` a tool result in its place.
fn read_content(
    content: InContent,
    calls: &mut Calls,
    messages: &mut Vec<Message>,
) -> Result<(), ProxyError> {
    unsupported_fields(&content.other, &[])?;
    let role = match content.role.as_deref() {
        None | Some("user") => Role::User,
        Some("model") => Role::Assistant,
        Some(other) => {
            return Err(bad_request(format!(
                "content role '{}' cannot be translated; use 'user' or 'model'",
                truncate(other, 64)
            )));
        }
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for part in content.parts.unwrap_or_default() {
        unsupported_fields(&part.other, PART_IGNORED)?;
        if part.thought == Some(true) {
            continue;
        }
        if let Some(text) = part.text {
            parts.push(Part::Text(text));
        }
        if let Some(blob) = part.inline_data {
            if !blob.mime_type.starts_with("image/") {
                return Err(bad_request(format!(
                    "inlineData of type '{}' cannot be translated; only images can",
                    truncate(&blob.mime_type, 64)
                )));
            }
            parts.push(Part::Image(Image::Base64 {
                media_type: blob.mime_type,
                data: blob.data,
            }));
        }
        if let Some(call) = part.function_call {
            unsupported_fields(&call.other, &[])?;
            if role != Role::Assistant {
                return Err(bad_request("functionCall parts belong in 'model' contents"));
            }
            tool_calls.push(ToolCall {
                id: calls.call(call.id, &call.name),
                arguments: call.args.unwrap_or_else(|| json!({})).to_string(),
                name: call.name,
            });
        }
        if let Some(result) = part.function_response {
            unsupported_fields(&result.other, &[])?;
            if role != Role::User {
                return Err(bad_request(
                    "functionResponse parts belong in 'user' contents",
                ));
            }
            if !parts.is_empty() {
                messages.push(turn(Role::User, std::mem::take(&mut parts), Vec::new()));
            }
            let id = calls.answer(result.id, &result.name)?;
            let mut message = Message::text(Role::Tool, result_text(result.response));
            message.tool_call_id = Some(id);
            messages.push(message);
        }
    }
    if !parts.is_empty() || !tool_calls.is_empty() {
        messages.push(turn(role, parts, tool_calls));
    }
    Ok(())
}

fn turn(role: Role, content: Vec<Part>, tool_calls: Vec<ToolCall>) -> Message {
    Message {
        role,
        content,
        tool_calls,
        tool_call_id: None,
        is_error: false,
    }
}

/// A function's result as text: `{"content": text}` (how results are wrapped for
/// Gemini providers) is the text itself; any other object is its JSON.
fn result_text(response: Option<Value>) -> String {
    match response {
        Some(Value::Object(object)) if object.len() == 1 => match object.get("content") {
            Some(Value::String(text)) => text.clone(),
            _ => Value::Object(object).to_string(),
        },
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    }
}

fn read_declaration(declaration: InDeclaration) -> Result<Tool, ProxyError> {
    unsupported_fields(&declaration.other, &[])?;
    let parameters = match (declaration.parameters_json_schema, declaration.parameters) {
        (Some(_), Some(_)) => {
            return Err(bad_request(format!(
                "function '{}' sets both 'parameters' and 'parametersJsonSchema'",
                truncate(&declaration.name, 64)
            )));
        }
        (Some(schema), None) => Some(schema),
        (None, Some(schema)) => Some(json_schema(schema)),
        (None, None) => None,
    };
    Ok(Tool {
        name: declaration.name,
        description: declaration.description,
        parameters,
    })
}

/// Gemini's OpenAPI-style schema (`"type": "OBJECT"`, as Google's SDKs write it) as JSON
/// Schema, whose type names are lower case; the rest is the same.
fn json_schema(mut schema: Value) -> Value {
    fn lower(value: &mut Value) {
        match value {
            Value::Object(object) => {
                for (key, value) in object.iter_mut() {
                    match value {
                        Value::String(type_) if key == "type" => {
                            *type_ = type_.to_ascii_lowercase();
                        }
                        _ => lower(value),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(lower),
            _ => {}
        }
    }
    lower(&mut schema);
    schema
}

fn tool_choice(config: InToolConfig) -> Result<Option<ToolChoice>, ProxyError> {
    unsupported_fields(&config.other, &[])?;
    let Some(calling) = config.function_calling_config else {
        return Ok(None);
    };
    unsupported_fields(&calling.other, &[])?;
    let names = calling.allowed_function_names.unwrap_or_default();
    let choice = match (calling.mode.as_deref(), names.as_slice()) {
        (None | Some("AUTO" | "MODE_UNSPECIFIED"), []) => ToolChoice::Auto,
        (Some("NONE"), []) => ToolChoice::None,
        (Some("ANY"), []) => ToolChoice::Required,
        (Some("ANY"), [name]) => ToolChoice::Tool(name.clone()),
        (None | Some("AUTO" | "NONE" | "ANY" | "MODE_UNSPECIFIED"), _) => {
            return Err(bad_request(
                "'allowedFunctionNames' can only be translated with mode ANY and one name",
            ));
        }
        (Some(mode), _) => {
            return Err(bad_request(format!(
                "functionCallingConfig mode '{}' cannot be translated",
                truncate(mode, 64)
            )));
        }
    };
    Ok(Some(choice))
}

fn generation_config(
    config: InGenerationConfig,
    request: &mut ChatRequest,
) -> Result<(), ProxyError> {
    // thinkingConfig, responseModalities, logprobs... have no IR field.
    unsupported_fields(&config.other, &[])?;
    if config.candidate_count.is_some_and(|n| n != 1) {
        return Err(bad_request(
            "'candidateCount' other than 1 cannot be translated (one candidate is answered)",
        ));
    }
    request.temperature = config.temperature;
    request.top_p = config.top_p;
    request.top_k = match config.top_k {
        Some(k) if k >= 0.0 && k.fract() == 0.0 && k <= u32::MAX as f64 => Some(k as u64),
        Some(_) => return Err(bad_request("'topK' must be a whole number")),
        None => None,
    };
    request.max_tokens = config.max_output_tokens;
    request.stop = config.stop_sequences.unwrap_or_default();
    request.seed = config.seed;
    request.presence_penalty = config.presence_penalty;
    request.frequency_penalty = config.frequency_penalty;
    let schema = match (config.response_json_schema, config.response_schema) {
        (Some(schema), _) => Some(schema),
        (None, Some(schema)) => Some(json_schema(schema)),
        (None, None) => None,
    };
    request.response_format = match (config.response_mime_type.as_deref(), schema) {
        (None | Some("text/plain"), None) => None,
        (Some("application/json"), None) => Some(ResponseFormat::JsonObject),
        (Some("application/json"), Some(schema)) => Some(ResponseFormat::JsonSchema {
            name: "response".to_string(),
            schema: Some(schema),
            strict: None,
        }),
        (None | Some("text/plain"), Some(_)) => {
            return Err(bad_request(
                "a response schema needs 'responseMimeType': 'application/json'",
            ));
        }
        (Some(other), _) => {
            return Err(bad_request(format!(
                "'responseMimeType' '{}' cannot be translated",
                truncate(other, 64)
            )));
        }
    };
    Ok(())
}

// ---------------------------------------------------------------------------------
// Responses out

/// A whole answer as a `GenerateContentResponse` with one candidate.
pub fn write_response(response: &ChatResponse) -> Bytes {
    let mut parts = Vec::new();
    if !response.text.is_empty() {
        parts.push(json!({"text": response.text}));
    }
    parts.extend(response.tool_calls.iter().map(function_call_part));
    let body = chunk(
        parts,
        Some(&response.finish),
        Some(&response.usage),
        &response.model,
        &response.id,
    );
    Bytes::from(body.to_string())
}

/// A `GenerateContentResponse` (a whole answer, or one event of a stream).
fn chunk(
    parts: Vec<Value>,
    finish: Option<&Finish>,
    usage: Option<&Usage>,
    model: &str,
    id: &str,
) -> Value {
    let mut candidate = Map::new();
    // Google leaves `content` out when there is none (a blocked answer); SDKs read a
    // missing content as no text.
    if !parts.is_empty() {
        candidate.insert("content".into(), json!({"parts": parts, "role": "model"}));
    }
    if let Some(finish) = finish {
        candidate.insert("finishReason".into(), finish_reason(finish.reason).into());
    }
    candidate.insert("index".into(), 0.into());
    let mut body = Map::new();
    body.insert("candidates".into(), json!([candidate]));
    if let Some(usage) = usage {
        body.insert("usageMetadata".into(), usage_to_wire(usage));
    }
    if !model.is_empty() {
        body.insert("modelVersion".into(), model.into());
    }
    if !id.is_empty() {
        body.insert("responseId".into(), id.into());
    }
    Value::Object(body)
}

/// A call as Gemini's `functionCall`, with its id so the result can name it back.
/// Gemini's arguments are an object; arguments that are not one (a provider's broken
/// JSON) are kept as text under `arguments` rather than lost.
fn function_call_part(call: &ToolCall) -> Value {
    let args = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ if call.arguments.trim().is_empty() => json!({}),
        _ => json!({"arguments": call.arguments}),
    };
    json!({"functionCall": {"id": call.id, "name": call.name, "args": args}})
}

/// Gemini ends a turn that calls functions with `STOP` too.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
    }
}

/// `usageMetadata` in Gemini's terms: `promptTokenCount` includes cached tokens, and
/// reasoning is `thoughtsTokenCount`, outside `candidatesTokenCount` (the IR counts it
/// in the output: ir/usage.rs).
fn usage_to_wire(usage: &Usage) -> Value {
    let mut wire = Map::new();
    let reasoning = usage.reasoning_tokens();
    wire.insert("promptTokenCount".into(), usage.prompt_tokens.into());
    wire.insert(
        "candidatesTokenCount".into(),
        usage.completion_tokens.saturating_sub(reasoning).into(),
    );
    if reasoning > 0 {
        wire.insert("thoughtsTokenCount".into(), reasoning.into());
    }
    wire.insert(
        "totalTokenCount".into(),
        usage
            .prompt_tokens
            .saturating_add(usage.completion_tokens)
            .into(),
    );
    let cached = usage.cached_tokens();
    if cached > 0 {
        wire.insert("cachedContentTokenCount".into(), cached.into());
    }
    Value::Object(wire)
}

// ---------------------------------------------------------------------------------
// Streams out

/// Writes IR events as `streamGenerateContent?alt=sse` events: one
/// `GenerateContentResponse` per event. Gemini sends each function call whole, so a
/// call's arguments are gathered and the call written when the next other event comes;
/// the finish reason and usage go in the last event, as Gemini sends them.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    id: String,
    model: String,
    /// Calls whose arguments are still arriving: index, id, name, arguments.
    calls: Vec<(u32, String, String, String)>,
    finish: Option<Finish>,
    usage: Option<Usage>,
}

impl StreamEncoder {
    pub fn encode(&mut self, event: StreamEvent, out: &mut BytesMut) {
        match event {
            StreamEvent::Start { id, model, usage } => {
                self.id = id;
                self.model = model;
                if usage.is_some() {
                    self.usage = usage;
                }
            }
            StreamEvent::Text(text) => {
                self.flush_calls(out);
                if !text.is_empty() {
                    self.write(out, vec![json!({"text": text})], false);
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.calls.push((index, id, name, String::new()));
            }
            StreamEvent::ToolCallArguments { index, arguments } => {
                if let Some(call) = self.calls.iter_mut().find(|c| c.0 == index) {
                    call.3.push_str(&arguments);
                }
            }
            StreamEvent::Finish(finish) => {
                self.flush_calls(out);
                self.finish = Some(finish);
            }
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Done => {
                self.flush_calls(out);
                if self.finish.is_some() || self.usage.is_some() {
                    self.write(out, Vec::new(), true);
                }
            }
            StreamEvent::Error(error) => {
                self.flush_calls(out);
                write_event(out, &error_body(&error));
            }
        }
    }

    fn flush_calls(&mut self, out: &mut BytesMut) {
        if self.calls.is_empty() {
            return;
        }
        let parts = std::mem::take(&mut self.calls)
            .into_iter()
            .map(|(_, id, name, arguments)| {
                function_call_part(&ToolCall {
                    id,
                    name,
                    arguments,
                })
            })
            .collect();
        self.write(out, parts, false);
    }

    fn write(&self, out: &mut BytesMut, parts: Vec<Value>, last: bool) {
        let (finish, usage) = match last {
            true => (self.finish.as_ref(), self.usage.as_ref()),
            false => (None, None),
        };
        write_event(out, &chunk(parts, finish, usage, &self.model, &self.id));
    }
}

fn write_event(out: &mut BytesMut, data: &Value) {
    out.put_slice(b"data: ");
    // Serializing a `Value` cannot fail.
    let _ = serde_json::to_writer(out.writer(), data);
    // Google ends its events with CRLF.
    out.put_slice(b"\r\n\r\n");
}

/// A mid-stream failure as the error object Google sends in a stream.
fn error_body(error: &StreamError) -> Value {
    let code = match error.kind {
        StreamErrorKind::Overloaded => 503,
        StreamErrorKind::RateLimited => 429,
        StreamErrorKind::Upstream => 500,
    };
    error_value(code, &error.message)
}

// ---------------------------------------------------------------------------------
// Errors out

/// Google's error body, `{"error":{"code","message","status"}}`.
pub fn write_error(code: u16, message: &str) -> Vec<u8> {
    serde_json::to_vec(&error_value(code, message)).unwrap_or_default()
}

fn error_value(code: u16, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status_name(code)}})
}

/// Google's canonical status (google.rpc.Code) for an HTTP status, paired as Google's
/// APIs pair them.
fn status_name(code: u16) -> &'static str {
    match code {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 | 529 => "UNAVAILABLE",
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

// ---------------------------------------------------------------------------------
// Usage of answers passed through

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageOnly {
    usage_metadata: Option<WireUsage>,
}

/// The usage of a whole `GenerateContentResponse`, or of one stream event's data,
/// read as translated answers are.
pub fn response_usage(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage_metadata
        .map(WireUsage::to_ir)
}

#[cfg(test)]
mod tests;
