//! Client-facing APIs: parse requests into the IR, and write answers and errors in the
//! client's own format.

pub mod anthropic;
pub mod openai;

use bytes::BytesMut;
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::body::Body;
use crate::error::ProxyError;
use crate::formats::{self, anthropic as anthropic_format, openai as openai_format};
use crate::ir::chat::{ChatResponse, StreamEvent};
use crate::ir::{ClientApi, Usage};
use crate::providers::{ChatStream, StreamEnd, StreamEndHook, StreamOutcome};

/// Longest model name accepted; model names end up in logs and error messages.
const MAX_MODEL_NAME: usize = 256;

fn bad(message: &str) -> ProxyError {
    ProxyError::BadRequest(message.to_string())
}

/// The `model` field: a non-empty string of bounded length.
fn model_name(raw: Option<&serde_json::value::RawValue>) -> Result<String, ProxyError> {
    match raw {
        None => Err(bad("missing required field 'model'")),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(model) if !model.is_empty() && model.len() <= MAX_MODEL_NAME => Ok(model),
            _ => Err(bad(&format!(
                "'model' must be a non-empty string of at most {MAX_MODEL_NAME} bytes"
            ))),
        },
    }
}

/// The `stream` field: a boolean, absent or null meaning false.
fn stream_flag(raw: Option<&serde_json::value::RawValue>) -> Result<bool, ProxyError> {
    match raw {
        None => Ok(false),
        Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
            Ok(stream) => Ok(stream.unwrap_or(false)),
            Err(_) => Err(bad("'stream' must be a boolean")),
        },
    }
}

/// `error` as a response in `api`'s error format, with the provider's `Retry-After`.
/// A provider's own error body in the client's format is the most useful thing to
/// return, so it is returned as is.
pub fn error_response(api: ClientApi, error: &ProxyError) -> Response<Body> {
    let mut response = match error {
        ProxyError::UpstreamRefused {
            status,
            native: Some(native),
            ..
        } if native.api == api => openai::json_response(*status, native.body.clone()),
        _ => match api {
            ClientApi::OpenAI => openai::error_response(error),
            ClientApi::Anthropic => anthropic::error_response(error),
        },
    };
    if let Some(value) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, value.clone());
    }
    response
}

/// A translated answer in `api`'s format.
pub fn write_response(api: ClientApi, response: &ChatResponse) -> Response<Body> {
    let body = match api {
        ClientApi::OpenAI => openai_format::write_response(response, formats::unix_now()),
        ClientApi::Anthropic => anthropic_format::write_response(response),
    };
    openai::json_response(StatusCode::OK, body)
}

/// A translated stream as a response body of `api`'s events. Each batch of IR events
/// leaves as one write as soon as it arrives. Reports its end once through `on_end`;
/// dropped early (the client left), it drops the upstream stream with it.
pub fn stream_body(
    api: ClientApi,
    include_usage: bool,
    events: ChatStream,
    on_end: StreamEndHook,
) -> Body {
    let encoder = match api {
        ClientApi::OpenAI => Encoder::OpenAI(openai_format::ChunkEncoder::new(
            include_usage,
            formats::unix_now(),
        )),
        ClientApi::Anthropic => Encoder::Anthropic(anthropic_format::EventEncoder::default()),
    };
    let state = EncodedStream {
        events,
        encoder,
        usage: None,
        started: false,
        on_end: Some(on_end),
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            state.on_end.as_ref()?;
            let Some(batch) = state.events.next().await else {
                // A ChatStream ends with Done or Error; this is a safety net.
                state.end(StreamOutcome::UpstreamError);
                return None;
            };
            let mut out = BytesMut::new();
            let mut outcome = None;
            if !state.started && batch.first().is_some_and(StreamEvent::needs_start) {
                // Clients need the start first (OpenAI's role chunk, Anthropic's
                // message_start), even if the provider never sent it.
                state
                    .encoder
                    .encode(StreamEvent::anonymous_start(), &mut out);
            }
            state.started = true;
            for event in batch {
                match &event {
                    StreamEvent::Start { usage, .. } => state.usage = *usage,
                    StreamEvent::Usage(usage) => state.usage = Some(*usage),
                    StreamEvent::Done => outcome = Some(StreamOutcome::Complete),
                    StreamEvent::Error(_) => outcome = Some(StreamOutcome::UpstreamError),
                    _ => {}
                }
                state.encoder.encode(event, &mut out);
            }
            if let Some(outcome) = outcome {
                state.end(outcome);
            }
            if !out.is_empty() {
                return Some((Ok(Frame::data(out.freeze())), state));
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

enum Encoder {
    OpenAI(openai_format::ChunkEncoder),
    Anthropic(anthropic_format::EventEncoder),
}

impl Encoder {
    fn encode(&mut self, event: StreamEvent, out: &mut BytesMut) {
        match self {
            Encoder::OpenAI(encoder) => encoder.encode(event, out),
            Encoder::Anthropic(encoder) => encoder.encode(event, out),
        }
    }
}

struct EncodedStream {
    events: ChatStream,
    encoder: Encoder,
    usage: Option<Usage>,
    /// Whether anything was encoded yet.
    started: bool,
    on_end: Option<StreamEndHook>,
}

impl EncodedStream {
    fn end(&mut self, outcome: StreamOutcome) {
        if let Some(on_end) = self.on_end.take() {
            on_end(StreamEnd {
                usage: self.usage,
                outcome,
            });
        }
    }
}

impl Drop for EncodedStream {
    fn drop(&mut self) {
        self.end(StreamOutcome::ClientGone);
    }
}

/// A server-sent event stream response.
pub fn event_stream(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering reverse proxies in front of us to pass events on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::chat::{Finish, FinishReason};

    async fn body_text(api: ClientApi, events: Vec<StreamEvent>) -> String {
        let stream: ChatStream = Box::pin(futures_util::stream::iter(vec![events]));
        let body = stream_body(api, false, stream, Box::new(|_| {}));
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// A provider that never sent a start still gives clients the event they need first.
    #[tokio::test]
    async fn a_stream_without_a_start_still_opens_with_one() {
        let events = vec![
            StreamEvent::Text("hi".into()),
            StreamEvent::Finish(Finish {
                reason: FinishReason::Stop,
                stop_sequence: None,
            }),
            StreamEvent::Done,
        ];
        let anthropic = body_text(ClientApi::Anthropic, events.clone()).await;
        assert!(
            anthropic.starts_with("event: message_start\n"),
            "{anthropic}"
        );
        assert!(anthropic.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let openai = body_text(ClientApi::OpenAI, events).await;
        assert!(
            openai.starts_with(r#"data: {"id":"","object":"chat.completion.chunk""#),
            "{openai}"
        );
        assert!(
            openai.contains(r#""delta":{"role":"assistant","content":""}"#),
            "{openai}"
        );
    }
}
