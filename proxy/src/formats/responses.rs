//! OpenAI's Responses API (`/v1/responses`): its usage and its stream events.
//!
//! Work in progress (issue 24). Here: reading a Responses answer's usage and its
//! semantic stream events into IR events (`StreamDecoder`, which meters a
//! passed-through stream), and writing IR answers and events as Responses ones
//! (`write_response`, `StreamEncoder`: the events the gateway adds to a passed-through
//! stream, and translated answers). Still to come: `parse_request`, to translate
//! requests to providers that only have chat completions.
//!
//! A stream is a sequence of typed events, each `data` a JSON object with `type` and
//! `sequence_number`; it has no `[DONE]`: `response.completed`, `response.incomplete`
//! or `response.failed` ends it, each carrying the whole response (usage included).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ir::Usage;
use crate::ir::chat::{
    ChatResponse, Finish, FinishReason, StreamError, StreamErrorKind, StreamEvent, ToolCall,
};
use crate::ir::tolerant::null_as_default;

/// A Responses answer's `usage`. Counts are liberal: `null` or absent is zero.
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default, deserialize_with = "null_as_default")]
    input_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    output_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    input_tokens_details: InputDetails,
    #[serde(default, deserialize_with = "null_as_default")]
    output_tokens_details: OutputDetails,
}

#[derive(Debug, Default, Deserialize)]
struct InputDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    cached_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    cache_write_tokens: u64,
}

#[derive(Debug, Default, Deserialize)]
struct OutputDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    reasoning_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage::new(
            usage.input_tokens,
            usage.output_tokens,
            usage.input_tokens_details.cached_tokens,
        )
        .with_cache_writes(usage.input_tokens_details.cache_write_tokens)
        .with_reasoning(usage.output_tokens_details.reasoning_tokens)
    }
}

/// The response object, as far as the gateway reads it.
#[derive(Debug, Default, Deserialize)]
struct WireResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    created_at: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    usage: Option<WireUsage>,
    #[serde(default, deserialize_with = "null_as_default")]
    incomplete_details: Option<IncompleteDetails>,
    #[serde(default, deserialize_with = "null_as_default")]
    error: Option<WireError>,
    #[serde(default, deserialize_with = "null_as_default")]
    output: Vec<WireItem>,
}

#[derive(Debug, Default, Deserialize)]
struct IncompleteDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    reason: String,
}

#[derive(Debug, Default, Deserialize)]
struct WireError {
    #[serde(default, deserialize_with = "null_as_default")]
    code: String,
    #[serde(default, deserialize_with = "null_as_default")]
    message: String,
}

/// An output item: only its type and, for a function call, what starts one.
#[derive(Debug, Default, Deserialize)]
struct WireItem {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    call_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    name: String,
}

/// The usage of a whole Responses answer; `None` when it has none or is unreadable.
pub fn usage_of_response(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct UsageOnly {
        #[serde(default, deserialize_with = "null_as_default")]
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage
        .map(Usage::from)
}

/// The usage in a stream event's response (a final event's), if it has one.
pub fn usage_of_event(data: &str) -> Option<Usage> {
    let event = serde_json::from_str::<WireEvent>(data).ok()?;
    Some(event.response?.usage?.into())
}

/// One stream event, as far as the gateway reads it.
#[derive(Debug, Deserialize)]
struct WireEvent {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    response: Option<WireResponse>,
    #[serde(default, deserialize_with = "null_as_default")]
    item: Option<WireItem>,
    #[serde(default, deserialize_with = "null_as_default")]
    delta: String,
    #[serde(default, deserialize_with = "null_as_default")]
    sequence_number: Option<u64>,
    /// An `error` event's fields are at the top level.
    #[serde(default, deserialize_with = "null_as_default")]
    code: String,
    #[serde(default, deserialize_with = "null_as_default")]
    message: String,
}

/// Reads a Responses stream's events into IR events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// What an encoder continuing the stream needs (`StreamEncoder::continuing`).
    head: Head,
    started: bool,
    /// Function calls started so far (the IR numbers them from 0).
    tool_calls: u32,
    /// The stream reached its end event.
    ended: bool,
}

impl StreamDecoder {
    pub fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        let Ok(event) = serde_json::from_str::<WireEvent>(data) else {
            // Not an event the gateway reads (or not JSON): left to the client.
            return;
        };
        if let Some(number) = event.sequence_number {
            self.head.next_sequence = number.saturating_add(1);
        }
        match event.kind.as_str() {
            "response.created" | "response.in_progress" if !self.started => {
                let response = event.response.unwrap_or_default();
                self.started = true;
                self.head.id.clone_from(&response.id);
                self.head.model.clone_from(&response.model);
                self.head.created_at = response.created_at;
                out.push(StreamEvent::Start {
                    id: response.id,
                    model: response.model,
                    usage: None,
                });
            }
            "response.output_text.delta" | "response.refusal.delta" if !event.delta.is_empty() => {
                out.push(StreamEvent::Text(event.delta));
            }
            "response.output_item.added" => {
                if let Some(item) = event.item.filter(|i| i.kind == "function_call") {
                    out.push(StreamEvent::ToolCallStart {
                        index: self.tool_calls,
                        id: item.call_id,
                        name: item.name,
                    });
                    self.tool_calls += 1;
                }
            }
            "response.function_call_arguments.delta"
                if !event.delta.is_empty() && self.tool_calls > 0 =>
            {
                out.push(StreamEvent::ToolCallArguments {
                    index: self.tool_calls - 1,
                    arguments: event.delta,
                });
            }
            "response.completed" | "response.incomplete" => {
                self.ended = true;
                let response = event.response.unwrap_or_default();
                let calls_tools = response.output.iter().any(|i| i.kind == "function_call");
                let reason = match response.incomplete_details {
                    Some(details) if details.reason == "content_filter" => {
                        FinishReason::ContentFilter
                    }
                    Some(_) => FinishReason::Length,
                    None if calls_tools => FinishReason::ToolCalls,
                    None => FinishReason::Stop,
                };
                if let Some(usage) = response.usage {
                    out.push(StreamEvent::Usage(usage.into()));
                }
                out.push(StreamEvent::Finish(Finish {
                    reason,
                    stop_sequence: None,
                }));
                out.push(StreamEvent::Done);
            }
            "response.failed" => {
                self.ended = true;
                let response = event.response.unwrap_or_default();
                if let Some(usage) = response.usage {
                    out.push(StreamEvent::Usage(usage.into()));
                }
                let error = response.error.unwrap_or_default();
                out.push(StreamEvent::Error(stream_error(&error.code, error.message)));
            }
            "error" => {
                self.ended = true;
                out.push(StreamEvent::Error(stream_error(&event.code, event.message)));
            }
            _ => {}
        }
    }

    /// Where the stream stands, for an encoder that continues it.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The upstream closed: a stream that sent no end event broke off.
    pub fn end(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.ended {
            self.ended = true;
            out.push(StreamEvent::Error(StreamError::broken()));
        }
    }
}

/// The response a stream is about, and the sequence number of its next event.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub id: String,
    pub model: String,
    pub created_at: u64,
    pub next_sequence: u64,
}

/// An IR answer as a Responses `response` object.
pub fn write_response(answer: &ChatResponse, created_at: u64) -> Bytes {
    let output = Output {
        text: Some(answer.text.clone()).filter(|t| !t.is_empty()),
        calls: answer.tool_calls.clone(),
    };
    let head = Head {
        id: answer.id.clone(),
        model: answer.model.clone(),
        created_at,
        next_sequence: 0,
    };
    let response = response_object(&head, &output, Some(&answer.finish), Some(&answer.usage));
    Bytes::from(response.to_string())
}

/// What a response has put out so far: its message text, then its function calls.
#[derive(Debug, Default)]
struct Output {
    text: Option<String>,
    calls: Vec<ToolCall>,
}

impl Output {
    /// The output items, as the final response lists them.
    fn items(&self, id: &str) -> Vec<Value> {
        let mut items = Vec::new();
        if let Some(text) = &self.text {
            items.push(message_item(id, text, "completed"));
        }
        for (index, call) in self.calls.iter().enumerate() {
            items.push(call_item(id, index, call, "completed"));
        }
        items
    }
}

fn message_id(id: &str) -> String {
    format!("msg_{}", id.trim_start_matches("resp_"))
}

fn call_item_id(id: &str, index: usize) -> String {
    format!("fc_{}_{index}", id.trim_start_matches("resp_"))
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": message_id(id),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn call_item(id: &str, index: usize, call: &ToolCall, status: &str) -> Value {
    json!({
        "id": call_item_id(id, index),
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    })
}

/// The `response` object: in progress while `finish` is `None`, else completed or
/// incomplete (the token limit, or the provider's filter).
fn response_object(
    head: &Head,
    output: &Output,
    finish: Option<&Finish>,
    usage: Option<&Usage>,
) -> Value {
    let (status, incomplete) = match finish.map(|f| f.reason) {
        None => ("in_progress", Value::Null),
        Some(FinishReason::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(FinishReason::ContentFilter) => ("incomplete", json!({"reason": "content_filter"})),
        Some(FinishReason::Stop | FinishReason::ToolCalls) => ("completed", Value::Null),
    };
    json!({
        "id": head.id,
        "object": "response",
        "created_at": head.created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "model": head.model,
        "output": match finish {
            Some(_) => output.items(&head.id),
            None => Vec::new(),
        },
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage.map(usage_object),
    })
}

fn usage_object(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens(),
            "cache_write_tokens": usage.cache_write_tokens(),
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens()},
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    })
}

/// Writes IR stream events as Responses semantic events (`event: <type>` and the
/// JSON `data`, numbered by `sequence_number`).
#[derive(Debug, Default)]
pub struct StreamEncoder {
    head: Head,
    output: Output,
    /// The item being written: the message, or a function call (its index in
    /// `output.calls`).
    open: Option<Open>,
    finish: Option<Finish>,
    usage: Option<Usage>,
    ended: bool,
}

#[derive(Debug, Clone, Copy)]
enum Open {
    Message,
    Call(usize),
}

impl StreamEncoder {
    /// An encoder for a new stream, created now (`created_at`).
    pub fn new(created_at: u64) -> Self {
        Self {
            head: Head {
                created_at,
                ..Head::default()
            },
            ..Self::default()
        }
    }

    /// An encoder for the events the gateway adds to a passed-through stream (its end
    /// when cut, an error), numbered after the last one the provider sent. The
    /// output items the provider sent are not repeated in a final response it writes.
    pub fn continuing(head: &Head) -> Self {
        Self {
            head: head.clone(),
            ..Self::default()
        }
    }

    pub fn encode(&mut self, event: StreamEvent, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        match event {
            StreamEvent::Start { id, model, usage } => {
                self.head.id = match id.starts_with("resp_") {
                    true => id,
                    false => format!("resp_{id}"),
                };
                self.head.model = model;
                self.usage = usage;
                let response = response_object(&self.head, &self.output, None, None);
                self.write(out, "response.created", json!({"response": response}));
                let response = response_object(&self.head, &self.output, None, None);
                self.write(out, "response.in_progress", json!({"response": response}));
            }
            StreamEvent::Text(text) => {
                if !matches!(self.open, Some(Open::Message)) {
                    self.close(out);
                    if self.output.text.is_none() {
                        self.open_message(out);
                    }
                    self.open = Some(Open::Message);
                }
                let item_id = message_id(&self.head.id);
                let data = json!({
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": text,
                    "logprobs": [],
                });
                self.output.text.get_or_insert_default().push_str(&text);
                self.write(out, "response.output_text.delta", data);
            }
            StreamEvent::ToolCallStart { id, name, .. } => {
                self.close(out);
                let index = self.output.calls.len();
                let call = ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                };
                let item = call_item(&self.head.id, index, &call, "in_progress");
                self.output.calls.push(call);
                let output_index = self.output_index(index);
                self.write(
                    out,
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
                self.open = Some(Open::Call(index));
            }
            StreamEvent::ToolCallArguments { arguments, .. } => {
                let Some(Open::Call(index)) = self.open else {
                    return;
                };
                self.output.calls[index].arguments.push_str(&arguments);
                let data = json!({
                    "item_id": call_item_id(&self.head.id, index),
                    "output_index": self.output_index(index),
                    "delta": arguments,
                });
                self.write(out, "response.function_call_arguments.delta", data);
            }
            StreamEvent::Finish(finish) => self.finish = Some(finish),
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Done => {
                self.close(out);
                let finish = self.finish.take().unwrap_or(Finish {
                    reason: FinishReason::Stop,
                    stop_sequence: None,
                });
                let kind = match finish.reason {
                    FinishReason::Length | FinishReason::ContentFilter => "response.incomplete",
                    FinishReason::Stop | FinishReason::ToolCalls => "response.completed",
                };
                let response =
                    response_object(&self.head, &self.output, Some(&finish), self.usage.as_ref());
                self.write(out, kind, json!({"response": response}));
                self.ended = true;
            }
            StreamEvent::Error(error) => {
                let code = match error.kind {
                    StreamErrorKind::Overloaded => "server_is_overloaded",
                    StreamErrorKind::RateLimited => "rate_limit_exceeded",
                    StreamErrorKind::Upstream => "server_error",
                };
                let data = json!({"code": code, "message": error.message, "param": null});
                self.write(out, "error", data);
                self.ended = true;
            }
        }
    }

    /// The output index of function call `index`: after the message, if there is one.
    fn output_index(&self, index: usize) -> usize {
        index + usize::from(self.output.text.is_some())
    }

    fn open_message(&mut self, out: &mut BytesMut) {
        let id = message_id(&self.head.id);
        let item = json!({
            "id": id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        });
        self.write(
            out,
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        );
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        self.write(
            out,
            "response.content_part.added",
            json!({"item_id": id, "output_index": 0, "content_index": 0, "part": part}),
        );
    }

    /// Closes the item being written: its `...done` events.
    fn close(&mut self, out: &mut BytesMut) {
        match self.open.take() {
            None => {}
            Some(Open::Message) => {
                let id = message_id(&self.head.id);
                let text = self.output.text.clone().unwrap_or_default();
                self.write(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                );
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.write(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "part": part}),
                );
                let item = message_item(&self.head.id, &text, "completed");
                self.write(
                    out,
                    "response.output_item.done",
                    json!({"output_index": 0, "item": item}),
                );
            }
            Some(Open::Call(index)) => {
                let call = self.output.calls[index].clone();
                let output_index = self.output_index(index);
                self.write(
                    out,
                    "response.function_call_arguments.done",
                    json!({
                        "item_id": call_item_id(&self.head.id, index),
                        "output_index": output_index,
                        "arguments": call.arguments,
                    }),
                );
                let item = call_item(&self.head.id, index, &call, "completed");
                self.write(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                );
            }
        }
    }

    /// One event: `data` with its `type` and `sequence_number` added.
    fn write(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        if let Value::Object(fields) = &mut data {
            fields.insert("type".into(), Value::from(kind));
            fields.insert(
                "sequence_number".into(),
                Value::from(self.head.next_sequence),
            );
        }
        self.head.next_sequence += 1;
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(data.to_string().as_bytes());
        out.put_slice(b"\n\n");
    }
}

/// An error event or failed response as a stream error: overloaded and rate-limited
/// kept apart (a client may wait and retry those), the rest an upstream failure.
fn stream_error(code: &str, message: String) -> StreamError {
    let kind = match code {
        "rate_limit_exceeded" => StreamErrorKind::RateLimited,
        "server_is_overloaded" | "slow_down" => StreamErrorKind::Overloaded,
        _ => StreamErrorKind::Upstream,
    };
    let message = match message.is_empty() {
        true => "the provider's response failed".to_string(),
        false => message,
    };
    StreamError { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(events: &[&str]) -> Vec<StreamEvent> {
        let mut decoder = StreamDecoder::default();
        let mut out = Vec::new();
        for event in events {
            decoder.decode(event, &mut out);
        }
        decoder.end(&mut out);
        out
    }

    #[test]
    fn whole_answer_usage_maps_cached_and_reasoning_tokens() {
        let body = br#"{"id":"resp_1","object":"response","output":[],
            "usage":{"input_tokens":120,"input_tokens_details":{"cached_tokens":100,"cache_write_tokens":20},
                     "output_tokens":40,"output_tokens_details":{"reasoning_tokens":32},
                     "total_tokens":160}}"#;
        let usage = usage_of_response(body).unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (120, 40));
        assert_eq!((usage.cached_tokens(), usage.reasoning_tokens()), (100, 32));
        assert_eq!(usage.cache_write_tokens(), 20);
        let nulls = br#"{"usage":{"input_tokens":3,"output_tokens":null,
            "input_tokens_details":null,"output_tokens_details":null}}"#;
        let usage = usage_of_response(nulls).unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 0));
        assert_eq!(usage_of_response(br#"{"usage":null}"#), None);
    }

    #[test]
    fn a_text_stream_reads_into_start_text_usage_and_finish() {
        let out = decode(&[
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"gpt-4.1","status":"in_progress","output":[],"usage":null}}"#,
            r#"{"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1","model":"gpt-4.1"}}"#,
            r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"type":"message","id":"msg_1","role":"assistant","content":[]}}"#,
            r#"{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hel"}"#,
            r#"{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"lo"}"#,
            r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","model":"gpt-4.1","status":"completed","output":[{"type":"message"}],"usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}}"#,
        ]);
        assert_eq!(
            out,
            vec![
                StreamEvent::Start {
                    id: "resp_1".into(),
                    model: "gpt-4.1".into(),
                    usage: None
                },
                StreamEvent::Text("Hel".into()),
                StreamEvent::Text("lo".into()),
                StreamEvent::Usage(Usage::new(5, 2, 0)),
                StreamEvent::Finish(Finish {
                    reason: FinishReason::Stop,
                    stop_sequence: None
                }),
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn function_calls_incomplete_answers_and_failures() {
        let out = decode(&[
            r#"{"type":"response.created","response":{"id":"r","model":"m"}}"#,
            r#"{"type":"response.output_item.added","item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"get_weather","arguments":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","delta":"{\"city\":"}"#,
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","delta":"\"Oslo\"}"}"#,
            r#"{"type":"response.completed","response":{"output":[{"type":"function_call"}],"usage":null}}"#,
        ]);
        assert_eq!(
            out[1..],
            [
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_1".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 0,
                    arguments: "{\"city\":".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 0,
                    arguments: "\"Oslo\"}".into()
                },
                StreamEvent::Finish(Finish {
                    reason: FinishReason::ToolCalls,
                    stop_sequence: None
                }),
                StreamEvent::Done,
            ]
        );

        let cut = decode(&[
            r#"{"type":"response.incomplete","response":{"incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":1,"output_tokens":9}}}"#,
        ]);
        assert!(cut.contains(&StreamEvent::Finish(Finish {
            reason: FinishReason::Length,
            stop_sequence: None
        })));

        let failed = decode(&[
            r#"{"type":"response.failed","response":{"error":{"code":"server_error","message":"boom"}}}"#,
        ]);
        assert_eq!(
            failed,
            [StreamEvent::Error(StreamError {
                kind: StreamErrorKind::Upstream,
                message: "boom".into()
            })]
        );
        let limited = decode(&[
            r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down","sequence_number":3}"#,
        ]);
        assert!(matches!(
            &limited[..],
            [StreamEvent::Error(StreamError {
                kind: StreamErrorKind::RateLimited,
                ..
            })]
        ));

        let broken = decode(&[r#"{"type":"response.created","response":{"id":"r"}}"#]);
        assert_eq!(
            broken.last(),
            Some(&StreamEvent::Error(StreamError::broken()))
        );
    }
}
