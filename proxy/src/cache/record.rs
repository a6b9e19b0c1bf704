//! Storing an answer as it reaches the client: a whole answer at once, a stream once
//! it has ended complete. Nothing is stored from an error, a stream cut short (by the
//! provider, the client leaving, or a quota), or an answer over the size limit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use switchboard_api::snapshot::Pricing;

use super::entry::Entry;
use super::{Cache, Flight, Key};
use crate::body::Body;
use crate::formats::openai::{self as openai_format, ChunkDecoder};
use crate::formats::unix_now;
use crate::ir::Usage;
use crate::ir::chat::{ChatResponse, Finish, StreamEvent, ToolCall};
use crate::providers::{ChatStream, Reply, StreamEndHook};
use crate::quota::StreamBudget;
use crate::sse::{self, EventSplitter};

/// Stores the answer of one cache miss.
#[derive(Debug)]
pub struct Recorder {
    pub(super) cache: Arc<Cache>,
    pub(super) route: String,
    pub(super) key: Key,
    pub(super) ttl: Duration,
    pub(super) max_bytes: u64,
    /// Identical requests waiting for this answer.
    pub(super) flight: Option<Flight>,
    /// A native stream's usage, as its relay reported it.
    pub(super) stream_usage: Arc<OnceLock<Usage>>,
}

impl Recorder {
    /// `reply`, storing it once it is complete. `pricing` prices what a later hit
    /// saves; `budget` is the quota budget a native stream was metered against (a
    /// stream that reached it was cut, and is not stored).
    pub fn record(
        self,
        reply: Reply,
        pricing: Option<Pricing>,
        budget: Option<StreamBudget>,
    ) -> Reply {
        match reply {
            Reply::Native { body, usage } => {
                self.store(body.clone(), usage.unwrap_or_default(), pricing);
                Reply::Native { body, usage }
            }
            Reply::Chat(answer) => {
                let body = openai_format::write_response(&answer, unix_now());
                self.store(body, answer.usage, pricing);
                Reply::Chat(answer)
            }
            Reply::ChatStream(events) => Reply::ChatStream(self.collect_events(events, pricing)),
            Reply::NativeStream(body) => {
                Reply::NativeStream(self.collect_native(body, pricing, budget))
            }
        }
    }

    fn store(self, body: Bytes, usage: Usage, pricing: Option<Pricing>) {
        if body.len() as u64 > self.max_bytes {
            self.cache.too_large(&self.route);
            return;
        }
        let cost = pricing.map(|p| {
            p.cost_usd(
                usage.prompt_tokens,
                usage.cached_tokens(),
                usage.completion_tokens,
            )
        });
        let entry = Arc::new(Entry::new(body, usage, cost, self.ttl));
        self.cache.store(&self.route, self.key, entry.clone());
        if let Some(flight) = self.flight {
            flight.land(entry);
        }
    }

    /// A translated stream, collected as it passes.
    fn collect_events(self, events: ChatStream, pricing: Option<Pricing>) -> ChatStream {
        let mut collector = Collector::new(self.max_bytes);
        let mut recorder = Some(self);
        Box::pin(events.map(move |batch| {
            for event in &batch {
                if collector.push(event)
                    && let (Some(recorder), Some(answer)) = (recorder.take(), collector.answer())
                {
                    recorder.store_answer(answer, pricing);
                }
            }
            batch
        }))
    }

    /// Wraps the hook an upstream stream reports its end to, so that a native stream's
    /// usage reaches the recorder: the relay takes out the usage chunk when the client
    /// did not ask for it, before the bytes pass here.
    pub fn watch(&self, hook: StreamEndHook) -> StreamEndHook {
        let usage = self.stream_usage.clone();
        Box::new(move |end| {
            if let Some(reported) = end.usage {
                let _ = usage.set(reported);
            }
            hook(end);
        })
    }

    /// An OpenAI stream passed through as bytes, decoded on the side; stored when the
    /// body has ended after `[DONE]`, with the usage the relay reported.
    fn collect_native(
        self,
        body: Body,
        pricing: Option<Pricing>,
        budget: Option<StreamBudget>,
    ) -> Body {
        struct State {
            body: Body,
            collector: Collector,
            splitter: EventSplitter,
            decoder: ChunkDecoder,
            events: Vec<StreamEvent>,
            ended: bool,
            recorder: Option<Recorder>,
        }
        let state = State {
            body,
            collector: Collector::new(self.max_bytes),
            splitter: EventSplitter::default(),
            decoder: ChunkDecoder::default(),
            events: Vec::new(),
            ended: false,
            recorder: Some(self),
        };
        let frames = futures_util::stream::unfold(state, move |mut state| async move {
            let Some(frame) = state.body.frame().await else {
                // The body is over: the relay has reported its end, with the usage.
                let cut = budget.is_some_and(|mut b| b.spend(state.collector.output_bytes));
                if let (true, false, Some(recorder)) = (state.ended, cut, state.recorder.take())
                    && let Some(mut answer) = state.collector.answer()
                {
                    if let Some(usage) = recorder.stream_usage.get() {
                        answer.usage = *usage;
                    }
                    recorder.store_answer(answer, pricing);
                }
                return None;
            };
            if let (Ok(frame), Some(_)) = (&frame, &state.recorder)
                && let Some(data) = frame.data_ref()
            {
                for event in state.splitter.push(data) {
                    if let Some(data) = sse::data(&event) {
                        state.decoder.decode(&data, &mut state.events);
                    }
                }
                for event in std::mem::take(&mut state.events) {
                    if state.collector.push(&event) {
                        state.ended = true;
                    }
                }
            }
            Some((frame, state))
        });
        StreamBody::new(frames).boxed_unsync()
    }

    fn store_answer(self, answer: ChatResponse, pricing: Option<Pricing>) {
        let body = openai_format::write_response(&answer, unix_now());
        self.store(body, answer.usage, pricing);
    }
}

/// A streamed answer put back together.
#[derive(Debug)]
struct Collector {
    id: String,
    model: String,
    text: String,
    tool_calls: Vec<(u32, ToolCall)>,
    finish: Option<Finish>,
    usage: Usage,
    /// Output text and tool arguments so far.
    output_bytes: usize,
    max_bytes: u64,
    /// Nothing to store: too large, or the stream failed.
    spoiled: bool,
}

impl Collector {
    fn new(max_bytes: u64) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            text: String::new(),
            tool_calls: Vec::new(),
            finish: None,
            usage: Usage::default(),
            output_bytes: 0,
            max_bytes,
            spoiled: false,
        }
    }

    /// Takes in one event; true when the stream has ended (`Done` or an error).
    fn push(&mut self, event: &StreamEvent) -> bool {
        match event {
            StreamEvent::Start { id, model, usage } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                if let Some(usage) = usage {
                    self.usage = *usage;
                }
            }
            StreamEvent::Text(text) => {
                self.output_bytes += text.len();
                if !self.spoiled {
                    self.text.push_str(text);
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.tool_calls.push((
                    *index,
                    ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                ));
            }
            StreamEvent::ToolCallArguments { index, arguments } => {
                self.output_bytes += arguments.len();
                if let Some((_, call)) = self.tool_calls.iter_mut().find(|(i, _)| i == index) {
                    call.arguments.push_str(arguments);
                }
            }
            StreamEvent::Finish(finish) => self.finish = Some(finish.clone()),
            StreamEvent::Usage(usage) => self.usage = *usage,
            StreamEvent::Error(_) => {
                self.spoiled = true;
                return true;
            }
            StreamEvent::Done => return true,
        }
        if self.output_bytes as u64 > self.max_bytes {
            // Stop growing; `answer` will refuse.
            self.spoiled = true;
            self.text = String::new();
        }
        false
    }

    /// The whole answer, if the stream ended complete.
    fn answer(&mut self) -> Option<ChatResponse> {
        if self.spoiled {
            return None;
        }
        Some(ChatResponse {
            id: std::mem::take(&mut self.id),
            model: std::mem::take(&mut self.model),
            text: std::mem::take(&mut self.text),
            tool_calls: std::mem::take(&mut self.tool_calls)
                .into_iter()
                .map(|(_, call)| call)
                .collect(),
            finish: self.finish.take()?,
            usage: self.usage,
        })
    }
}
