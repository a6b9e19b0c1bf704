//! A `streamGenerateContent` stream as the one response it spells, and a response as
//! a stream: how the cache keeps a passed-through Gemini answer whole and replays it
//! to a client that streams.
//!
//! Each event of a Gemini stream is a whole `GenerateContentResponse` holding the
//! parts that are new; the last carries the finish reason and the final usage. Put
//! together: each candidate's parts in order (consecutive plain text parts of the same
//! kind joined), every other field as last sent. Unknown fields and part types are
//! kept. A response is a valid stream of one event, so that is how it is replayed.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::sse;

/// Puts a passed-through stream back together as one response. An error event, an
/// unreadable event, a stream without a finish reason, or a response growing past its
/// size limit gives nothing.
#[derive(Debug)]
pub struct StreamAssembler {
    response: Map<String, Value>,
    /// What the response has grown by so far (parts added, text joined), against
    /// `max_bytes`. Fields each event replaces do not count: they are held once.
    grown: usize,
    max_bytes: usize,
    spoiled: bool,
    finished: bool,
}

impl StreamAssembler {
    /// An assembler that gives up once the response grows past `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            response: Map::new(),
            grown: 0,
            max_bytes,
            spoiled: false,
            finished: false,
        }
    }

    /// Takes in one event, as received.
    pub fn push(&mut self, event: &[u8]) {
        if self.spoiled {
            return;
        }
        let data = match sse::data(event) {
            Ok(Some(data)) => data,
            Ok(None) => return,
            Err(_) => return self.spoil(),
        };
        match serde_json::from_str::<Value>(&data) {
            Ok(Value::Object(chunk)) if !chunk.contains_key("error") => self.merge(chunk),
            _ => self.spoil(),
        }
        if self.grown > self.max_bytes {
            self.spoil();
        }
    }

    /// The response, if the stream ended with a finish reason (or a blocked prompt).
    pub fn finish(self) -> Option<Bytes> {
        if self.spoiled || !self.finished {
            return None;
        }
        serde_json::to_vec(&self.response).ok().map(Bytes::from)
    }

    fn spoil(&mut self) {
        self.spoiled = true;
        self.response = Map::new();
    }

    fn merge(&mut self, chunk: Map<String, Value>) {
        for (name, value) in chunk {
            if value.is_null() {
                continue;
            }
            if name == "promptFeedback" && value.get("blockReason").is_some() {
                self.finished = true;
            }
            match (name.as_str(), value) {
                ("candidates", Value::Array(candidates)) => {
                    for (position, candidate) in candidates.into_iter().enumerate() {
                        if let Value::Object(candidate) = candidate {
                            self.merge_candidate(position, candidate);
                        }
                    }
                }
                (_, value) => {
                    self.response.insert(name, value);
                }
            }
        }
    }

    fn merge_candidate(&mut self, position: usize, candidate: Map<String, Value>) {
        match merge_candidate(&mut self.response, position, candidate) {
            Some((grown, finished)) => {
                self.grown = self.grown.saturating_add(grown);
                self.finished |= finished;
            }
            None => self.spoil(),
        }
    }
}

/// Merges one candidate of an event into `response`: how many bytes of parts it added
/// and whether it finished; `None` when the stream is not one this understands (an
/// index with a gap before it).
fn merge_candidate(
    response: &mut Map<String, Value>,
    position: usize,
    candidate: Map<String, Value>,
) -> Option<(usize, bool)> {
    let index = candidate
        .get("index")
        .and_then(Value::as_u64)
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(position);
    let candidates = array_field(response, "candidates");
    if index > candidates.len() {
        return None;
    }
    if index == candidates.len() {
        candidates.push(Value::Object(Map::new()));
    }
    let Value::Object(merged) = &mut candidates[index] else {
        return None;
    };
    let mut finished = false;
    let mut grown = 0;
    for (name, value) in candidate {
        if value.is_null() {
            continue;
        }
        finished |= name == "finishReason";
        match (name.as_str(), value, merged.get_mut("content")) {
            ("content", Value::Object(mut content), Some(Value::Object(existing))) => {
                let parts = match content.remove("parts") {
                    Some(Value::Array(parts)) => parts,
                    _ => Vec::new(),
                };
                let kept = array_field(existing, "parts");
                for part in parts {
                    grown += push_part(kept, part);
                }
                existing.extend(content);
            }
            (name, value, _) => {
                if name == "content" {
                    grown += value.to_string().len();
                }
                merged.insert(name.to_string(), value);
            }
        }
    }
    Some((grown, finished))
}

/// The array `name` of `object`, made one if it is missing or not an array.
fn array_field<'a>(object: &'a mut Map<String, Value>, name: &str) -> &'a mut Vec<Value> {
    let value = object
        .entry(name)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !value.is_array() {
        *value = Value::Array(Vec::new());
    }
    match value {
        Value::Array(items) => items,
        _ => unreachable!("made an array above"),
    }
}

/// Adds a part, joining plain text to the plain text before it (a stream of a
/// thousand events is one text part, not a thousand); returns the bytes it added.
fn push_part(parts: &mut Vec<Value>, part: Value) -> usize {
    if let (Some(Value::Object(last)), Value::Object(new)) = (parts.last_mut(), &part)
        && is_plain_text(last)
        && is_plain_text(new)
        && last.get("thought") == new.get("thought")
        && let (Some(Value::String(text)), Some(Value::String(more))) =
            (last.get_mut("text"), new.get("text"))
    {
        text.push_str(more);
        return more.len();
    }
    let size = part.to_string().len();
    parts.push(part);
    size
}

/// A part that is text and nothing else (no signature, no metadata).
fn is_plain_text(part: &Map<String, Value>) -> bool {
    part.get("text").is_some_and(Value::is_string)
        && part.keys().all(|k| k == "text" || k == "thought")
}

/// A whole response as a stream: one event holding all of it. `None` if `body` is not
/// JSON.
pub fn response_as_stream(body: &[u8]) -> Option<Vec<Bytes>> {
    // Compact: Google writes whole responses over many lines, and an event's data is
    // one line here.
    let response: Value = serde_json::from_slice(body).ok()?;
    Some(vec![sse::event(&response.to_string())])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn assemble(chunks: &[Value], max_bytes: usize) -> Option<Value> {
        let mut assembler = StreamAssembler::new(max_bytes);
        for chunk in chunks {
            assembler.push(&sse::event(&chunk.to_string()));
        }
        serde_json::from_slice(&assembler.finish()?).ok()
    }

    #[test]
    fn a_stream_is_put_back_together() {
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Thinking", "thought": true}]}}], "modelVersion": "gemini-x"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": " more", "thought": true}, {"text": "Hel"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"},
                {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"}]},
                "finishReason": "STOP", "safetyRatings": []}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4,
                    "thoughtsTokenCount": 2, "totalTokenCount": 9},
                "modelVersion": "gemini-x", "responseId": "r1"}),
        ];
        let response = assemble(&chunks, 1 << 20).unwrap();
        assert_eq!(
            response,
            json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "Thinking more", "thought": true},
                    {"text": "Hello"},
                    {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"}
                ]}, "finishReason": "STOP", "safetyRatings": []}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4,
                    "thoughtsTokenCount": 2, "totalTokenCount": 9},
                "modelVersion": "gemini-x", "responseId": "r1"
            })
        );
        // Put back together and streamed again: the same response.
        let replayed = response_as_stream(response.to_string().as_bytes()).unwrap();
        let mut again = StreamAssembler::new(1 << 20);
        for event in &replayed {
            again.push(event);
        }
        assert_eq!(
            serde_json::from_slice::<Value>(&again.finish().unwrap()).unwrap(),
            response
        );
    }

    #[test]
    fn an_unfinished_failed_or_oversized_stream_gives_nothing() {
        let text = json!({"candidates": [{"content": {"parts": [{"text": "a"}]}}]});
        let last = json!({"candidates": [{"finishReason": "STOP"}]});
        assert!(assemble(&[text.clone(), last.clone()], 1 << 20).is_some());
        assert_eq!(assemble(std::slice::from_ref(&text), 1 << 20), None);
        let error = json!({"error": {"code": 503, "status": "UNAVAILABLE"}});
        assert_eq!(
            assemble(&[text.clone(), error, last.clone()], 1 << 20),
            None
        );
        assert_eq!(assemble(&[text, last], 20), None);
    }
}
