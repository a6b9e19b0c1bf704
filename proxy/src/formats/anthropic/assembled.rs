//! A Messages API stream as the one message it spells, and a message as the stream
//! that would have spelled it: how the cache keeps a passed-through answer whole and
//! replays it to a client that streams.
//!
//! Both work on JSON values, not on the IR: every block type, field and delta the
//! gateway knows nothing about (thinking and its signature, citations, server tool
//! results) survives the round trip. The rules are those of Anthropic's streaming
//! reference: `message_start` carries the message with empty content, each block
//! opens with `content_block_start`, grows by deltas (`text_delta`, `input_json_delta`,
//! `thinking_delta`, `signature_delta`, `citations_delta`) and closes with
//! `content_block_stop`; `message_delta` sets the stop reason and the final usage.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::write_event;
use crate::sse;

/// Puts a passed-through stream back together as one message. Anything it cannot put
/// together faithfully (an unknown delta, an error event, a message growing past its
/// size limit) spoils it: nothing is stored rather than part of an answer.
#[derive(Debug)]
pub struct StreamAssembler {
    message: Option<Map<String, Value>>,
    /// `input_json_delta` text of the open tool block, parsed when it stops.
    partial_json: String,
    /// What the message has grown by so far (text appended, blocks added), against
    /// `max_bytes`: what it holds, not the events' framing.
    grown: usize,
    max_bytes: usize,
    spoiled: bool,
    stopped: bool,
}

impl StreamAssembler {
    /// An assembler that gives up once the message grows past `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            message: None,
            partial_json: String::new(),
            grown: 0,
            max_bytes,
            spoiled: false,
            stopped: false,
        }
    }

    /// Takes in one event, as received (`event:` and `data:` lines).
    pub fn push(&mut self, event: &[u8]) {
        if self.spoiled {
            return;
        }
        let data = match sse::data(event) {
            Ok(Some(data)) => data,
            Ok(None) => return,
            Err(_) => return self.spoil(),
        };
        let grown = match serde_json::from_str::<Value>(&data) {
            Ok(Value::Object(event)) => self.apply(&event, data.len()),
            _ => None,
        };
        self.grown = self.grown.saturating_add(grown.unwrap_or(usize::MAX));
        if self.grown > self.max_bytes {
            self.spoil();
        }
    }

    /// The message, if the stream reached `message_stop` whole.
    pub fn finish(self) -> Option<Bytes> {
        let message = self.message.filter(|_| self.stopped && !self.spoiled)?;
        serde_json::to_vec(&message).ok().map(Bytes::from)
    }

    fn spoil(&mut self) {
        self.spoiled = true;
        self.message = None;
        self.partial_json = String::new();
    }

    /// Applies one event (`size` bytes of data); how much the message grew by, or
    /// `None` when it cannot be applied faithfully.
    fn apply(&mut self, event: &Map<String, Value>, size: usize) -> Option<usize> {
        let mut grown = size;
        match event.get("type")?.as_str()? {
            "message_start" => {
                let mut message = event.get("message")?.as_object()?.clone();
                message.insert("content".into(), Value::Array(Vec::new()));
                self.message = Some(message);
            }
            "content_block_start" => {
                let block = event.get("content_block")?.as_object()?.clone();
                self.content()?.push(Value::Object(block));
                self.partial_json.clear();
            }
            "content_block_delta" => {
                let delta = event.get("delta")?.as_object()?;
                let index = usize::try_from(event.get("index")?.as_u64()?).ok()?;
                let field = |name: &str| delta.get(name).and_then(Value::as_str).unwrap_or("");
                grown = ["text", "partial_json", "thinking", "signature"]
                    .iter()
                    .map(|name| field(name).len())
                    .sum();
                match delta.get("type")?.as_str()? {
                    "input_json_delta" => self.partial_json.push_str(field("partial_json")),
                    kind => {
                        let block = self.content()?.get_mut(index)?.as_object_mut()?;
                        match kind {
                            "text_delta" => append(block, "text", field("text")),
                            "thinking_delta" => append(block, "thinking", field("thinking")),
                            "signature_delta" => append(block, "signature", field("signature")),
                            "citations_delta" => {
                                grown = size;
                                let citation = delta.get("citation")?.clone();
                                let citations = block
                                    .entry("citations")
                                    .or_insert_with(|| Value::Array(Vec::new()));
                                if !citations.is_array() {
                                    *citations = Value::Array(Vec::new());
                                }
                                citations.as_array_mut()?.push(citation);
                            }
                            _ => return None,
                        }
                    }
                }
            }
            "content_block_stop" => {
                grown = 0;
                let index = usize::try_from(event.get("index")?.as_u64()?).ok()?;
                let partial = std::mem::take(&mut self.partial_json);
                if !partial.is_empty() {
                    let input: Value = serde_json::from_str(&partial).ok()?;
                    let block = self.content()?.get_mut(index)?.as_object_mut()?;
                    block.insert("input".into(), input);
                }
            }
            "message_delta" => {
                // It replaces fields: the message hardly grows.
                grown = 0;
                let message = self.message.as_mut()?;
                if let Some(Value::Object(delta)) = event.get("delta") {
                    for (name, value) in delta {
                        message.insert(name.clone(), value.clone());
                    }
                }
                if let Some(Value::Object(usage)) = event.get("usage") {
                    let merged = message
                        .entry("usage")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !merged.is_object() {
                        *merged = Value::Object(Map::new());
                    }
                    let merged = merged.as_object_mut()?;
                    // Counts in `message_delta` are cumulative; a `null` one says nothing.
                    for (name, value) in usage.iter().filter(|(_, v)| !v.is_null()) {
                        merged.insert(name.clone(), value.clone());
                    }
                }
            }
            "message_stop" => self.stopped = true,
            "ping" => grown = 0,
            // An error, or an event type this was not written for.
            _ => return None,
        }
        Some(grown)
    }

    fn content(&mut self) -> Option<&mut Vec<Value>> {
        self.message.as_mut()?.get_mut("content")?.as_array_mut()
    }
}

fn append(block: &mut Map<String, Value>, name: &str, text: &str) {
    match block.get_mut(name) {
        Some(Value::String(existing)) => existing.push_str(text),
        _ => {
            block.insert(name.into(), Value::String(text.into()));
        }
    }
}

/// A whole message as the stream events that would have spelled it, each block in one
/// delta (a thinking block in two: its text, then its signature). `None` if `body` is not a message.
pub fn message_as_stream(body: &[u8]) -> Option<Vec<Bytes>> {
    let Value::Object(mut message) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    let Some(Value::Array(content)) = message.insert("content".into(), Value::Array(Vec::new()))
    else {
        return None;
    };
    let stop_reason = message.insert("stop_reason".into(), Value::Null);
    let stop_sequence = message.insert("stop_sequence".into(), Value::Null);
    let usage = message.get("usage").cloned().unwrap_or_else(|| json!({}));

    let mut out = BytesMut::new();
    let mut events = Vec::new();
    let mut write = |name: &str, data: &Value| {
        write_event(&mut out, name, data);
        events.push(out.split().freeze());
    };
    write(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    );
    for (index, block) in content.into_iter().enumerate() {
        let Value::Object(mut block) = block else {
            return None;
        };
        let deltas = take_deltas(&mut block);
        let start = json!({"type": "content_block_start", "index": index, "content_block": block});
        write("content_block_start", &start);
        for delta in deltas {
            let delta = json!({"type": "content_block_delta", "index": index, "delta": delta});
            write("content_block_delta", &delta);
        }
        write(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": usage,
    });
    write("message_delta", &delta);
    write("message_stop", &json!({"type": "message_stop"}));
    Some(events)
}

/// Empties a block to what its `content_block_start` carries, and returns the deltas
/// that fill it again. Blocks that do not grow by deltas (tool results, redacted
/// thinking) start whole.
fn take_deltas(block: &mut Map<String, Value>) -> Vec<Value> {
    let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
    let mut deltas = Vec::new();
    let mut take_text = |block: &mut Map<String, Value>, field: &str, delta: &str| {
        if let Some(Value::String(text)) = block.insert(field.into(), Value::String(String::new()))
            && !text.is_empty()
        {
            deltas.push(json!({"type": delta, field: text}));
        }
    };
    match kind {
        "text" => {
            take_text(block, "text", "text_delta");
            if let Some(Value::Array(citations)) = block.get_mut("citations") {
                let citations = std::mem::take(citations);
                deltas.extend(
                    citations
                        .into_iter()
                        .map(|citation| json!({"type": "citations_delta", "citation": citation})),
                );
            }
        }
        "thinking" => {
            take_text(block, "thinking", "thinking_delta");
            take_text(block, "signature", "signature_delta");
        }
        "tool_use" | "server_tool_use" | "mcp_tool_use" => {
            if let Some(input) = block.insert("input".into(), json!({})) {
                let partial_json = input.to_string();
                deltas.push(json!({"type": "input_json_delta", "partial_json": partial_json}));
            }
        }
        _ => {}
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(events: &[Bytes]) -> Option<Value> {
        let mut assembler = StreamAssembler::new(1 << 20);
        let joined = sse::join(events.iter().cloned()).unwrap();
        for event in sse::EventSplitter::default().push(&joined) {
            assembler.push(&event);
        }
        let body = assembler.finish()?;
        serde_json::from_slice(&body).ok()
    }

    /// What coding agents get back: thinking with its signature, text with citations,
    /// a tool call, a server tool's result, and usage with cache reads and writes.
    fn agent_message() -> Value {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "Let me see.", "signature": "c2lnbmF0dXJl"},
                {"type": "redacted_thinking", "data": "b3BhcXVl"},
                {"type": "text", "text": "The answer", "citations": [
                    {"type": "char_location", "cited_text": "x", "document_index": 0,
                     "start_char_index": 0, "end_char_index": 1}]},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                 "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
                 "content": [{"type": "web_search_result", "url": "https://example.com"}]},
                {"type": "tool_use", "id": "toolu_1", "name": "edit",
                 "input": {"path": "a.rs", "lines": [1, 2]}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20,
                      "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 50}
        })
    }

    #[test]
    fn a_message_survives_being_streamed_and_put_back_together() {
        let message = agent_message();
        let events = message_as_stream(message.to_string().as_bytes()).unwrap();
        assert_eq!(assemble(&events), Some(message));
    }

    #[test]
    fn a_recorded_stream_is_put_back_together() {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1,"cache_creation_input_tokens":7}}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm, "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"yes."}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_9","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\": "}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let events: Vec<Bytes> = events.iter().map(|data| sse::event(data)).collect();
        let message = assemble(&events).unwrap();
        assert_eq!(
            message["content"],
            json!([
                {"type": "thinking", "thinking": "Hmm, yes.", "signature": "EqQB"},
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}
            ])
        );
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 25, "output_tokens": 15, "cache_creation_input_tokens": 7})
        );
        // Cut before message_stop, broken by an error, or past the limit: nothing.
        assert_eq!(assemble(&events[..events.len() - 1]), None);
        let mut errored = events.to_vec();
        errored.insert(
            3,
            sse::event(r#"{"type":"error","error":{"type":"overloaded_error"}}"#),
        );
        assert_eq!(assemble(&errored), None);
        let mut small = StreamAssembler::new(100);
        for event in &events {
            small.push(event);
        }
        assert_eq!(small.finish(), None);
    }

    #[test]
    fn a_delta_of_an_unknown_type_is_not_stored_in_part() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","content":[],"usage":{}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"hologram_delta","x":1}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let events: Vec<Bytes> = events.iter().map(|data| sse::event(data)).collect();
        assert_eq!(assemble(&events), None);
    }
}
