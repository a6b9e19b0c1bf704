//! A reply as the client's response. Whole answers are written at once; a stream is
//! written as it arrives, and on its way it passes the same steps whichever form it
//! takes (the provider's own events passed through, or IR events the client API
//! writes): its usage is read, its output metered against a quota budget (and cut
//! cleanly there), its events recorded for the cache, a mid-stream failure written as
//! an error event, and its end reported once to the request's end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};

use super::RequestEnd;
use crate::body::{self, Body, BoxError};
use crate::cache::Recorder;
use crate::client_api::{self, StreamEncoder};
use crate::formats::SseDecoder;
use crate::formats::{
    anthropic as anthropic_format, gemini as gemini_format, openai as openai_format,
    responses as responses_format,
};
use crate::ir::chat::{StreamError, StreamEvent};
use crate::ir::reply::Reply;
use crate::ir::stream::{ChatStream, NativeChunk, NativeStream, StreamEnd, StreamOutcome};
use crate::ir::{ClientApi, Request, Usage};
use crate::quota::StreamBudget;
use crate::sse;

/// What a reply passes on its way to the client, besides being written.
#[derive(Debug, Default)]
pub struct Taps {
    /// For a stream under a quota that cuts: the output it may produce.
    pub budget: Option<StreamBudget>,
    /// Stores the answer in the cache once it is complete.
    pub recorder: Option<Recorder>,
}

/// `reply` as the response to `request`; a stream reports its end to `end`.
pub fn response(reply: Reply, request: &Request, taps: Taps, end: &RequestEnd) -> Response<Body> {
    let Taps {
        budget,
        mut recorder,
    } = taps;
    let source = match reply {
        Reply::TokenEstimate(input_tokens) => {
            return client_api::anthropic::estimate_response(input_tokens);
        }
        Reply::Native { body, usage } => {
            if let Some(recorder) = recorder {
                recorder.record_native(&body, request.api, usage);
            }
            return body::json(StatusCode::OK, body);
        }
        Reply::Chat(answer) => {
            if let Some(recorder) = recorder {
                recorder.record_chat(&answer);
            }
            return client_api::write_response(request.api, &answer);
        }
        Reply::NativeStream(events) => {
            recorder = recorder.map(|r| r.passed_through(request.api));
            Source::Native {
                events,
                api: request.api,
                // Reading the events is only needed to meter or record them, and for
                // the Responses API, whose events are numbered: an event the gateway
                // adds (an error) takes the number after the provider's last.
                tap: (budget.is_some()
                    || recorder.is_some()
                    || request.api == ClientApi::Responses)
                    .then(|| Tap::new(request.api)),
            }
        }
        Reply::ChatStream(events) => Source::Translated {
            events,
            encoder: StreamEncoder::new(request.api, request.client_wants_usage),
            started: false,
        },
    };
    let writer = Writer {
        source,
        include_usage: request.client_wants_usage,
        budget,
        recorder,
        usage: None,
        estimated_input: request.estimated_input_tokens(),
        end: Some(end.clone()),
    };
    body::event_stream(writer.boxed_unsync())
}

/// A stream on its way to the client. Dropped early (the client left), it drops the
/// upstream stream with it.
struct Writer {
    source: Source,
    /// Whether an OpenAI client asked for the final usage chunk.
    include_usage: bool,
    budget: Option<StreamBudget>,
    recorder: Option<Recorder>,
    /// The last usage the stream reported.
    usage: Option<Usage>,
    /// Input tokens as estimated from the request, for a cut stream that reported none.
    estimated_input: u64,
    /// Taken when the end is reported: nothing is written after.
    end: Option<RequestEnd>,
}

enum Source {
    /// The provider's events in the client's format (`api`), forwarded byte for byte;
    /// read into IR events on the side (`tap`) only when they are metered or recorded.
    Native {
        events: NativeStream,
        api: ClientApi,
        tap: Option<Tap>,
    },
    /// IR events, written in the client's format.
    Translated {
        events: ChatStream,
        encoder: StreamEncoder,
        /// Whether anything was written yet.
        started: bool,
    },
}

/// A passed-through stream read into IR events, in its client API's format.
enum Tap {
    OpenAI(SseDecoder<openai_format::StreamDecoder>),
    Anthropic(SseDecoder<anthropic_format::StreamDecoder>),
    Gemini(SseDecoder<gemini_format::StreamDecoder>),
    Responses(SseDecoder<responses_format::StreamDecoder>),
}

// === impl Tap ===

impl Tap {
    fn new(api: ClientApi) -> Self {
        match api {
            ClientApi::OpenAI => Tap::OpenAI(SseDecoder::default()),
            ClientApi::Anthropic => Tap::Anthropic(SseDecoder::default()),
            ClientApi::Gemini => Tap::Gemini(SseDecoder::default()),
            ClientApi::Responses => Tap::Responses(SseDecoder::default()),
        }
    }

    fn decode_event(&mut self, event: &[u8], out: &mut Vec<StreamEvent>) {
        match self {
            Tap::OpenAI(tap) => tap.decode_event(event, out),
            Tap::Anthropic(tap) => tap.decode_event(event, out),
            Tap::Gemini(tap) => tap.decode_event(event, out),
            Tap::Responses(tap) => tap.decode_event(event, out),
        }
    }

    /// An encoder that goes on from the events read so far, for what the gateway adds
    /// at the end (a cut's closing events, an error): OpenAI chunks carry the
    /// provider's id and model; Anthropic's close the content block left open; Gemini's
    /// events each stand alone.
    fn continuing(&self, include_usage: bool) -> StreamEncoder {
        match self {
            Tap::OpenAI(tap) => StreamEncoder::OpenAI(openai_format::StreamEncoder::continuing(
                tap.decoder().head(),
                include_usage,
            )),
            Tap::Anthropic(tap) => StreamEncoder::Anthropic(
                anthropic_format::StreamEncoder::continuing(tap.decoder().open_block()),
            ),
            Tap::Gemini(_) => StreamEncoder::Gemini(gemini_format::StreamEncoder::default()),
            Tap::Responses(tap) => StreamEncoder::Responses(
                responses_format::StreamEncoder::continuing(tap.decoder().head()),
            ),
        }
    }
}

// === impl Writer ===

impl Writer {
    /// Native events, forwarded; when tapped, each is read to meter and record it, and
    /// the stream ends after the event that spends its budget.
    fn pass(&mut self, events: Vec<Bytes>) -> Bytes {
        let Source::Native { tap: Some(tap), .. } = &mut self.source else {
            return sse::join(events).unwrap_or_default();
        };
        let mut read = Vec::new();
        for (i, event) in events.iter().enumerate() {
            if let Some(recorder) = &mut self.recorder {
                recorder.observe_native(event);
            }
            read.clear();
            tap.decode_event(event, &mut read);
            for event in &read {
                if let Some(recorder) = &mut self.recorder {
                    recorder.observe(event);
                }
                if let Some(budget) = self.budget.as_mut()
                    && budget.count(event)
                {
                    let budget = *budget;
                    let mut encoder = tap.continuing(self.include_usage);
                    let kept = events[..=i].iter().cloned();
                    let mut out = BytesMut::from(&sse::join(kept).unwrap_or_default()[..]);
                    for event in self.cut(budget) {
                        encoder.encode(event, &mut out);
                    }
                    return out.freeze();
                }
            }
        }
        sse::join(events).unwrap_or_default()
    }

    /// IR events, written in the client's format; the stream ends at `Done`, `Error`,
    /// or after the event that spends its budget.
    fn translate(&mut self, batch: Vec<StreamEvent>) -> Bytes {
        let mut out = BytesMut::new();
        let Source::Translated {
            encoder, started, ..
        } = &mut self.source
        else {
            return Bytes::new();
        };
        if !*started && batch.first().is_some_and(StreamEvent::needs_start) {
            // Clients need the start first (OpenAI's role chunk, Anthropic's
            // message_start), even if the provider never sent it.
            encoder.encode(StreamEvent::anonymous_start(), &mut out);
        }
        *started = true;
        let mut ended = None;
        for event in batch {
            match &event {
                StreamEvent::Start { usage: Some(u), .. } | StreamEvent::Usage(u) => {
                    self.usage = Some(*u);
                }
                StreamEvent::Done => ended = Some(StreamOutcome::Complete),
                StreamEvent::Error(_) => ended = Some(StreamOutcome::UpstreamError),
                _ => {}
            }
            if let Some(recorder) = &mut self.recorder {
                recorder.observe(&event);
            }
            let spent = self.budget.as_mut().and_then(|budget| {
                let spent = budget.count(&event);
                spent.then_some(*budget)
            });
            encoder.encode(event, &mut out);
            if let Some(budget) = spent {
                let closing = self.cut(budget);
                let Source::Translated { encoder, .. } = &mut self.source else {
                    break;
                };
                for event in closing {
                    encoder.encode(event, &mut out);
                }
                return out.freeze();
            }
            if ended.is_some() {
                break;
            }
        }
        match ended {
            Some(StreamOutcome::Complete) => self.complete(),
            Some(outcome) => self.ended(outcome),
            None => {}
        }
        out.freeze()
    }

    /// The `budget` is spent: the stream ends here, with the events that close it
    /// (finish `length`, the usage so far, the end). The upstream stream is dropped with
    /// the writer; what was cut is not recorded.
    fn cut(&mut self, budget: StreamBudget) -> [StreamEvent; 3] {
        let input = self.usage.map_or(self.estimated_input, |u| u.prompt_tokens);
        let usage = budget.used(input);
        self.usage = Some(usage);
        self.recorder = None;
        self.ended(StreamOutcome::Complete);
        StreamBudget::closing_events(usage)
    }

    /// The upstream connection broke (or the stream cannot go on): an error event in
    /// the client's format.
    fn broken(&mut self, error: StreamError) -> Bytes {
        let error = StreamEvent::Error(error);
        let mut out = BytesMut::new();
        match &mut self.source {
            Source::Native { tap: Some(tap), .. } => {
                tap.continuing(self.include_usage).encode(error, &mut out);
            }
            Source::Native { api, tap: None, .. } => {
                Tap::new(*api)
                    .continuing(self.include_usage)
                    .encode(error, &mut out);
            }
            Source::Translated { encoder, .. } => encoder.encode(error, &mut out),
        }
        self.ended(StreamOutcome::UpstreamError);
        out.freeze()
    }

    /// The upstream finished the stream: the answer is recorded, if it is whole.
    fn complete(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            recorder.complete(self.usage);
        }
        self.ended(StreamOutcome::Complete);
    }

    /// Reports the stream's end, once.
    fn ended(&mut self, outcome: StreamOutcome) {
        if let Some(end) = self.end.take() {
            end.stream_ended(StreamEnd {
                usage: self.usage,
                outcome,
            });
        }
    }
}

/// Written as the client's connection asks for it: no task or channel in between, so
/// each upstream read costs one poll.
impl HttpBody for Writer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.end.is_none() {
                return Poll::Ready(None);
            }
            let bytes = match &mut this.source {
                Source::Native { events, .. } => match ready!(events.poll_next_unpin(cx)) {
                    Some(NativeChunk::Events { events, usage }) => {
                        if usage.is_some() {
                            this.usage = usage;
                        }
                        this.pass(events)
                    }
                    Some(NativeChunk::Broken) => this.broken(StreamError::broken()),
                    Some(NativeChunk::Failed(error)) => this.broken(error),
                    None => {
                        this.complete();
                        return Poll::Ready(None);
                    }
                },
                Source::Translated { events, .. } => match ready!(events.poll_next_unpin(cx)) {
                    Some(batch) => this.translate(batch),
                    None => {
                        // A ChatStream ends with Done or Error; this is a safety net.
                        this.ended(StreamOutcome::UpstreamError);
                        return Poll::Ready(None);
                    }
                },
            };
            if !bytes.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.ended(StreamOutcome::ClientGone);
    }
}

#[cfg(test)]
mod tests;
