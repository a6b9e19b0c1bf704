//! Wire formats: each module holds one API's JSON shapes and their translation to and
//! from the IR (`ir::chat`). Client APIs and provider adapters use these; nothing else
//! knows a wire format.
//!
//! Every module has the same shape, in both directions where the API is spoken on
//! that side:
//!
//! | step | client side (what a client sends and gets) | provider side (what we send and get) |
//! |---|---|---|
//! | request | `parse_request(body) -> ChatRequest` | `write_request(&ChatRequest, ..) -> Bytes` |
//! | response | `write_response(&ChatResponse) -> Bytes` | `parse_response(body) -> ChatResponse` |
//! | stream event | `StreamEncoder`: IR events -> wire events | `StreamDecoder`: wire events -> IR events |
//! | error | `write_error(..) -> body` | `parse_error(body) -> message` |
//!
//! `SseDecoder` is the one loop from upstream bytes to IR events (split, then decode).

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod responses;

use serde_json::{Map, Value};

use crate::error::ProxyError;
use crate::ir::chat::{Message, Role, StreamError, StreamEvent, Tool, ToolCall};
use crate::sse::{self, EventSplitter};

fn bad_request(message: impl Into<String>) -> ProxyError {
    ProxyError::BadRequest(message.into())
}

/// A provider's successful answer that cannot be read (`ProxyError::UpstreamUnreadable`):
/// what kind of error and where, for the log and the client. Never serde's own message,
/// which may quote the body (`invalid type: string "..."`).
pub(crate) fn unreadable(error: &serde_json::Error) -> ProxyError {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Io => "read error",
        Category::Syntax => "invalid JSON",
        Category::Data => "JSON of an unexpected shape",
        Category::Eof => "JSON cut short",
    };
    ProxyError::UpstreamUnreadable(format!(
        "{what} at line {} column {}",
        error.line(),
        error.column()
    ))
}

/// Refuses fields a translation cannot carry. `null` and `false` ask for nothing, so
/// they are let through; `ignored` lists fields read elsewhere.
fn unsupported_fields(other: &Map<String, Value>, ignored: &[&str]) -> Result<(), ProxyError> {
    let refused: Vec<&str> = other
        .iter()
        .filter(|(name, value)| {
            !ignored.contains(&name.as_str()) && !matches!(value, Value::Null | Value::Bool(false))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(bad_request(format!(
        "field(s) {} cannot be translated to the provider serving this model; remove them or route to a provider with the same API",
        refused
            .iter()
            .map(|n| format!("'{}'", truncate(n, 64)))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The media type and base64 data of a `data:` URL; `None` for other URLs.
fn data_url(url: &str) -> Result<Option<(String, String)>, ProxyError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(None);
    };
    let Some((media_type, data)) = rest.split_once(";base64,") else {
        return Err(bad_request(
            "image data URLs must be base64: data:<media type>;base64,<data>",
        ));
    };
    Ok(Some((media_type.to_string(), data.to_string())))
}

/// The system messages that open the conversation, and the rest. Providers with a
/// separate system field take the first part there.
fn split_system(messages: &[Message]) -> (&[Message], &[Message]) {
    let leading = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    messages.split_at(leading)
}

/// A tool call's arguments as the JSON object providers other than OpenAI want.
fn tool_arguments(call: &ToolCall) -> Result<Value, ProxyError> {
    if call.arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(&call.arguments).map_err(|_| {
        bad_request(format!(
            "the arguments of tool call '{}' are not valid JSON",
            truncate(&call.id, 64)
        ))
    })
}

/// A tool definition as `{"name", "description", <schema_field>: parameters}`, with
/// `default_schema` when the tool has no parameters.
fn tool_definition(tool: &Tool, schema_field: &str, default_schema: Option<Value>) -> Value {
    let mut wire = Map::new();
    wire.insert("name".into(), tool.name.as_str().into());
    if let Some(description) = &tool.description {
        wire.insert("description".into(), description.as_str().into());
    }
    if let Some(schema) = tool.parameters.clone().or(default_schema) {
        wire.insert(schema_field.into(), schema);
    }
    Value::Object(wire)
}

/// Conversation turns for APIs that want roles to alternate: `items` of a turn with
/// the same role as the last one join it.
#[derive(Default)]
struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    fn push(&mut self, role: &'static str, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(items),
            _ => self.0.push((role, items)),
        }
    }

    /// `{"role": role, <items_field>: items}` per turn.
    fn into_json(self, items_field: &str) -> Vec<Value> {
        self.0
            .into_iter()
            .map(|(role, items)| {
                let mut turn = Map::new();
                turn.insert("role".into(), role.into());
                turn.insert(items_field.into(), items.into());
                Value::Object(turn)
            })
            .collect()
    }
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A provider's stream format: upstream event data in, IR events out.
pub trait DecodeStream {
    /// The IR events for one upstream event's `data`.
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>);
    /// The upstream closed the stream; events that close it (`Done` when closing is how
    /// the format ends a stream).
    fn end(&mut self, _out: &mut Vec<StreamEvent>) {}
}

impl DecodeStream for openai::StreamDecoder {
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        openai::StreamDecoder::decode(self, data, out);
    }
}

impl DecodeStream for anthropic::StreamDecoder {
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        anthropic::StreamDecoder::decode(self, data, out);
    }
}

impl DecodeStream for responses::StreamDecoder {
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        responses::StreamDecoder::decode(self, data, out);
    }
    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        responses::StreamDecoder::end(self, out);
    }
}

impl DecodeStream for gemini::StreamDecoder {
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        gemini::StreamDecoder::decode(self, data, out);
    }
    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        gemini::StreamDecoder::end(self, out);
    }
}

impl<D: DecodeStream + ?Sized> DecodeStream for &mut D {
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        (**self).decode(data, out);
    }
    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        (**self).end(out);
    }
}

impl<D: DecodeStream + ?Sized> DecodeStream for Box<D> {
    fn decode(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        (**self).decode(data, out);
    }
    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        (**self).end(out);
    }
}

/// Upstream bytes to IR events: splits the bytes into server-sent events as they
/// arrive (nothing is held back beyond an unfinished event) and decodes each event's
/// data. The only place a byte stream becomes IR events.
#[derive(Debug, Default)]
pub struct SseDecoder<D> {
    splitter: EventSplitter,
    decoder: D,
}

impl<D: DecodeStream> SseDecoder<D> {
    pub fn new(decoder: D) -> Self {
        Self {
            splitter: EventSplitter::default(),
            decoder,
        }
    }

    /// A decoder that ends the stream with an error at an event longer than
    /// `max_event` bytes (see `EventSplitter::with_limit`).
    pub fn with_limit(decoder: D, max_event: usize) -> Self {
        Self {
            splitter: EventSplitter::with_limit(max_event),
            decoder,
        }
    }

    /// Appends the IR events of every event that `bytes` complete; an `Error` after
    /// them if an event is over the limit.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        for event in self.splitter.push(bytes) {
            self.decode_event(&event, out);
        }
        if self.splitter.too_large() {
            out.push(StreamEvent::Error(StreamError::upstream(
                sse::too_large_message(self.splitter.max_event()),
            )));
        }
    }

    /// Appends the IR events of one whole event (already split from the stream); an
    /// `Error` for an event that is not UTF-8, as a whole body that is not is refused.
    pub fn decode_event(&mut self, event: &[u8], out: &mut Vec<StreamEvent>) {
        match sse::data(event) {
            Ok(Some(data)) => self.decoder.decode(&data, out),
            Ok(None) => {}
            Err(sse::NotUtf8) => out.push(StreamEvent::Error(StreamError::upstream(
                sse::NOT_UTF8_MESSAGE,
            ))),
        }
    }

    /// The upstream closed: appends the events of an unfinished last event, then what
    /// the format ends a stream with.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(rest) = self.splitter.remainder() {
            self.decode_event(&rest, out);
        }
        self.decoder.end(out);
    }

    pub fn decoder(&self) -> &D {
        &self.decoder
    }
}

#[cfg(test)]
pub(crate) mod golden {
    //! The providers' documented examples (proxy/tests/golden, sources in SOURCES.md)
    //! and helpers to run stream decoders over them.

    use super::{DecodeStream, SseDecoder};
    use crate::ir::chat::StreamEvent;

    pub fn read(path: &str) -> String {
        let full = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    /// Decodes `bytes` delivered as `chunks` (split points), as the proxy does.
    pub fn decode_split(
        decoder: &mut dyn DecodeStream,
        bytes: &[u8],
        splits: &[usize],
    ) -> Vec<StreamEvent> {
        let mut sse = SseDecoder::new(decoder);
        let mut out = Vec::new();
        let mut points: Vec<usize> = splits.iter().map(|s| s % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut from = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            sse.push(&bytes[from..point], &mut out);
            from = point;
        }
        sse.finish(&mut out);
        out
    }

    /// The text of all `Text` events, and the arguments of each tool call by index.
    pub fn collect(events: &[StreamEvent]) -> (String, Vec<String>) {
        let mut text = String::new();
        let mut arguments: Vec<String> = Vec::new();
        for event in events {
            match event {
                StreamEvent::Text(t) => text.push_str(t),
                StreamEvent::ToolCallStart { index, .. } => {
                    assert_eq!(*index as usize, arguments.len(), "tool calls count from 0");
                    arguments.push(String::new());
                }
                StreamEvent::ToolCallArguments {
                    index,
                    arguments: a,
                } => {
                    arguments[*index as usize].push_str(a);
                }
                _ => {}
            }
        }
        (text, arguments)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::golden::{decode_split, read};
    use super::*;

    type NewDecoder = fn() -> Box<dyn DecodeStream>;

    /// Every documented stream, for every decoder that reads it.
    fn streams() -> Vec<(&'static str, NewDecoder)> {
        fn openai() -> Box<dyn DecodeStream> {
            Box::<openai::StreamDecoder>::default()
        }
        fn anthropic() -> Box<dyn DecodeStream> {
            Box::<anthropic::StreamDecoder>::default()
        }
        fn gemini() -> Box<dyn DecodeStream> {
            Box::new(gemini::StreamDecoder::with_rng(fastrand::Rng::with_seed(7)))
        }
        vec![
            ("openai/stream_text.sse", openai),
            ("openai/stream_tool_calls.sse", openai),
            ("anthropic/stream_text.sse", anthropic),
            ("anthropic/stream_tool_use.sse", anthropic),
            ("anthropic/stream_tool_use_sdk_fixture.sse", anthropic),
            ("anthropic/stream_error.sse", anthropic),
            ("anthropic/stream_error_midstream.sse", anthropic),
            ("gemini/stream_text.sse", gemini),
            ("gemini/stream_text_crlf.sse", gemini),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the bytes are split into reads, a stream decodes to the same events.
        #[test]
        fn streams_decode_the_same_however_they_are_split(
            splits in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            for (path, decoder) in streams() {
                let bytes = read(path);
                let whole = decode_split(decoder().as_mut(), bytes.as_bytes(), &[]);
                prop_assert!(!whole.is_empty(), "{path} decodes to events");
                let split = decode_split(decoder().as_mut(), bytes.as_bytes(), &splits);
                prop_assert_eq!(format!("{whole:?}"), format!("{split:?}"), "{}", path);
            }
        }

        /// Whatever an event's data, decoders return events, never panic.
        #[test]
        fn decoders_never_panic_on_arbitrary_data(data in ".{0,200}") {
            for (_, decoder) in streams() {
                let mut out = Vec::new();
                decoder().decode(&data, &mut out);
            }
        }
    }

    #[test]
    fn streams_decode_the_same_one_byte_at_a_time() {
        for (path, decoder) in streams() {
            let bytes = read(path);
            let whole = decode_split(decoder().as_mut(), bytes.as_bytes(), &[]);
            let every: Vec<usize> = (0..bytes.len()).collect();
            let split = decode_split(decoder().as_mut(), bytes.as_bytes(), &every);
            assert_eq!(format!("{whole:?}"), format!("{split:?}"), "{path}");
        }
    }

    #[test]
    fn an_event_that_is_not_utf8_decodes_to_an_error_in_every_format() {
        for (path, decoder) in streams() {
            let bytes = read(path).into_bytes();
            // After the first event: an event whose data has a byte UTF-8 never uses.
            let first_end = EventSplitter::default().push(&bytes)[0].len();
            let mut broken = bytes[..first_end].to_vec();
            broken.extend_from_slice(b"data: {\"x\":\"\xff\"}\n\n");
            broken.extend_from_slice(&bytes[first_end..]);
            let events = decode_split(decoder().as_mut(), &broken, &[]);
            let error = StreamEvent::Error(StreamError::upstream(sse::NOT_UTF8_MESSAGE));
            assert!(events.contains(&error), "{path}: {events:?}");
        }
    }

    #[test]
    fn refuses_unknown_fields_but_lets_null_and_false_through() {
        let other: Map<String, Value> =
            serde_json::from_str(r#"{"model":"m","logprobs":false,"store":null,"seedy":1}"#)
                .unwrap();
        let error = unsupported_fields(&other, &["model"]).unwrap_err();
        assert!(error.to_string().contains("'seedy'"), "{error}");
        let other: Map<String, Value> =
            serde_json::from_str(r#"{"model":"m","logprobs":false}"#).unwrap();
        assert!(unsupported_fields(&other, &["model"]).is_ok());
    }

    #[test]
    fn reads_base64_data_urls() {
        assert_eq!(
            data_url("data:image/png;base64,AAAA").unwrap(),
            Some(("image/png".to_string(), "AAAA".to_string()))
        );
        assert_eq!(data_url("https://x/y.png").unwrap(), None);
        assert!(data_url("data:image/png,raw").is_err());
    }
}
