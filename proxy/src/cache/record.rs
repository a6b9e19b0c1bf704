//! Storing an answer as it reaches the client: a whole answer at once, a stream once
//! it has ended complete. Nothing is stored from an error, a stream cut short (by the
//! provider, the client leaving, or a quota), or an answer over the size limit.
//!
//! A stream of IR events is put together here; a stream passed through in Anthropic's
//! or Gemini's format by that format's assembler, so that it is stored whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_api::snapshot::Pricing;

use super::entry::Entry;
use super::{Cache, Flight, Key};
use crate::formats::unix_now;
use crate::formats::{
    anthropic as anthropic_format, gemini as gemini_format, openai as openai_format,
};
use crate::ir::chat::{ChatResponse, Finish, StreamEvent, ToolCall};
use crate::ir::{ClientApi, Usage};

/// Stores the answer of one cache miss. Whoever writes the answer to the client feeds
/// it here: a whole answer with `record_native` or `record_chat`, a stream event by
/// event with `observe` (IR events) or `observe_native` (events passed through, after
/// `passed_through`) and, once it ended complete, `complete`.
#[derive(Debug)]
pub struct Recorder {
    cache: Arc<Cache>,
    route: String,
    key: Key,
    ttl: Duration,
    max_bytes: u64,
    /// Identical requests waiting for this answer.
    flight: Option<Flight>,
    /// The answering model's prices: what a later hit saves.
    pricing: Option<Pricing>,
    /// A streamed answer so far (boxed: most answers are whole).
    collector: Box<Collector>,
}

impl Recorder {
    pub(super) fn new(
        cache: Arc<Cache>,
        route: String,
        key: Key,
        ttl: Duration,
        max_bytes: u64,
        flight: Option<Flight>,
    ) -> Self {
        Self {
            cache,
            route,
            key,
            ttl,
            max_bytes,
            flight,
            pricing: None,
            collector: Box::new(Collector::Chat(ChatCollector::new(max_bytes))),
        }
    }

    /// The stream to record is passed through in `api`'s format: it is put together
    /// from its own events (`observe_native`), not from IR events.
    pub fn passed_through(mut self, api: ClientApi) -> Self {
        let max = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        *self.collector = match api {
            ClientApi::Anthropic => {
                Collector::Anthropic(anthropic_format::StreamAssembler::new(max))
            }
            ClientApi::Gemini => Collector::Gemini(gemini_format::StreamAssembler::new(max)),
            // OpenAI's events are read into the IR and stored in OpenAI's format anyway.
            // Responses are never stored (`key::NotCacheable::Stateful`).
            ClientApi::OpenAI | ClientApi::Responses => return self,
        };
        self
    }

    /// The answering model's prices.
    pub fn priced(mut self, pricing: Option<Pricing>) -> Self {
        self.pricing = pricing;
        self
    }

    /// Stores a whole answer passed through in the client's (`api`'s) own format.
    pub fn record_native(self, body: &Bytes, api: ClientApi, usage: Option<Usage>) {
        self.store(body.clone(), api, usage.unwrap_or_default());
    }

    /// Stores a whole answer from the IR.
    pub fn record_chat(self, answer: &ChatResponse) {
        let body = openai_format::write_response(answer, unix_now());
        self.store(body, ClientApi::OpenAI, answer.usage);
    }

    /// Takes in one IR event of a streamed answer.
    pub fn observe(&mut self, event: &StreamEvent) {
        if let Collector::Chat(collector) = &mut *self.collector {
            collector.push(event);
        }
    }

    /// Takes in one event of a passed-through stream, as received.
    pub fn observe_native(&mut self, event: &[u8]) {
        match &mut *self.collector {
            Collector::Chat(_) => {}
            Collector::Anthropic(assembler) => assembler.push(event),
            Collector::Gemini(assembler) => assembler.push(event),
        }
    }

    /// The stream ended complete, having reported `usage` (the usage it reported in
    /// its events otherwise): stores the answer, unless it failed or grew too large.
    pub fn complete(mut self, usage: Option<Usage>) {
        let collector =
            std::mem::replace(&mut *self.collector, Collector::Chat(ChatCollector::new(0)));
        let (api, body) = match collector {
            Collector::Chat(mut collector) => {
                let Some(mut answer) = collector.answer() else {
                    return;
                };
                if let Some(usage) = usage {
                    answer.usage = usage;
                }
                let body = openai_format::write_response(&answer, unix_now());
                return self.store(body, ClientApi::OpenAI, answer.usage);
            }
            Collector::Anthropic(assembler) => (ClientApi::Anthropic, assembler.finish()),
            Collector::Gemini(assembler) => (ClientApi::Gemini, assembler.finish()),
        };
        if let Some(body) = body {
            self.store(body, api, usage.unwrap_or_default());
        }
    }

    fn store(self, body: Bytes, api: ClientApi, usage: Usage) {
        if body.len() as u64 > self.max_bytes {
            self.cache.too_large(&self.route);
            return;
        }
        let cost = self.pricing.map(|p| usage.cost_usd(&p));
        let entry = Arc::new(Entry::new(body, api, usage, cost, self.ttl));
        self.cache.store(&self.route, self.key, entry.clone());
        if let Some(flight) = self.flight {
            flight.land(entry);
        }
    }
}

/// What puts a streamed answer together.
#[derive(Debug)]
enum Collector {
    Chat(ChatCollector),
    Anthropic(anthropic_format::StreamAssembler),
    Gemini(gemini_format::StreamAssembler),
}

/// A stream of IR events put back together.
#[derive(Debug)]
struct ChatCollector {
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
    /// The provider ended the stream normally.
    done: bool,
}

impl ChatCollector {
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
            done: false,
        }
    }

    /// Takes in one event.
    fn push(&mut self, event: &StreamEvent) {
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
            StreamEvent::Error(_) => self.spoiled = true,
            StreamEvent::Done => self.done = true,
        }
        if self.output_bytes as u64 > self.max_bytes {
            // Stop growing; `answer` will refuse.
            self.spoiled = true;
            self.text = String::new();
        }
    }

    /// The whole answer, if the stream ended complete.
    fn answer(&mut self) -> Option<ChatResponse> {
        if self.spoiled || !self.done {
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
