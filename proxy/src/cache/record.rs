//! Storing an answer as it reaches the client: a whole answer at once, a stream once
//! it has ended complete. Nothing is stored from an error, a stream cut short (by the
//! provider, the client leaving, or a quota), or an answer over the size limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_api::snapshot::Pricing;

use super::entry::Entry;
use super::{Cache, Flight, Key};
use crate::formats::openai as openai_format;
use crate::formats::unix_now;
use crate::ir::Usage;
use crate::ir::chat::{ChatResponse, Finish, StreamEvent, ToolCall};

/// Stores the answer of one cache miss. Whoever writes the answer to the client feeds
/// it here: a whole answer with `record_native` or `record_chat`, a stream event by
/// event with `observe` and, once it ended complete, `complete`.
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
            collector: Box::new(Collector::new(max_bytes)),
        }
    }

    /// The answering model's prices.
    pub fn priced(mut self, pricing: Option<Pricing>) -> Self {
        self.pricing = pricing;
        self
    }

    /// Stores a whole answer in the client's (OpenAI's) own format.
    pub fn record_native(self, body: &Bytes, usage: Option<Usage>) {
        self.store(body.clone(), usage.unwrap_or_default());
    }

    /// Stores a whole answer from the IR.
    pub fn record_chat(self, answer: &ChatResponse) {
        let body = openai_format::write_response(answer, unix_now());
        self.store(body, answer.usage);
    }

    /// Takes in one event of a streamed answer.
    pub fn observe(&mut self, event: &StreamEvent) {
        self.collector.push(event);
    }

    /// The stream ended complete, having reported `usage` (the usage it reported in
    /// its events otherwise): stores the answer, unless it failed or grew too large.
    pub fn complete(mut self, usage: Option<Usage>) {
        if let Some(mut answer) = self.collector.answer() {
            if let Some(usage) = usage {
                answer.usage = usage;
            }
            let body = openai_format::write_response(&answer, unix_now());
            self.store(body, answer.usage);
        }
    }

    fn store(self, body: Bytes, usage: Usage) {
        if body.len() as u64 > self.max_bytes {
            self.cache.too_large(&self.route);
            return;
        }
        let cost = self.pricing.map(|p| usage.cost_usd(&p));
        let entry = Arc::new(Entry::new(body, usage, cost, self.ttl));
        self.cache.store(&self.route, self.key, entry.clone());
        if let Some(flight) = self.flight {
            flight.land(entry);
        }
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
    /// The provider ended the stream normally.
    done: bool,
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
