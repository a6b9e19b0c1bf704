//! Provider adapters: from the IR to a provider's wire format and back.
//!
//! Each adapter takes a `Call` and returns a `Reply`. OpenAI-shaped providers answer
//! OpenAI clients in their own bytes (`Native`), which pass through untouched; every
//! other pairing is translated through the IR (`Chat`, `ChatStream`), and the client
//! API writes the answer in its own format.

mod anthropic;
mod echo;
mod exchange;
mod gemini;
mod openai;

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use switchboard_api::snapshot::{Provider, ProviderType};
use url::Url;

use crate::body::Body;
use crate::error::ProxyError;
use crate::formats::StreamDecoder;
use crate::ir::chat::{ChatResponse, StreamError, StreamEvent};
use crate::ir::{ClientApi, Operation, Request, TraceHeaders, Usage};
use crate::quota::StreamBudget;
use crate::runtime::ProviderRuntime;
use crate::sse::{self, EventSplitter};

/// One request to one provider.
pub struct Call<'a> {
    pub request: &'a Request,
    pub provider: &'a ProviderRuntime,
    /// The model name the provider knows (the Azure deployment for azure-openai).
    pub upstream_model: &'a str,
    /// For a whole response: the time it may take; for a stream: until its headers.
    pub timeout: Duration,
    pub request_id: &'a str,
    /// W3C trace context to send upstream.
    pub trace: TraceHeaders,
    /// For a stream under a quota that cuts: the output it may produce.
    pub budget: Option<StreamBudget>,
    pub on_stream_end: StreamEndHook,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("provider", &self.provider.id)
            .field("upstream_model", &self.upstream_model)
            .field("timeout", &self.timeout)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// What a provider answered.
pub enum Reply {
    /// A whole JSON response in the client's format, with the usage read from it.
    Native { body: Bytes, usage: Option<Usage> },
    /// Server-sent events in the client's format, forwarded as they arrive. Reports its
    /// end through the call's `on_stream_end`.
    NativeStream(Body),
    /// A whole answer, for the client API to write.
    Chat(ChatResponse),
    /// A streamed answer, for the client API to write as it arrives.
    ChatStream(ChatStream),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Native { usage, .. } => f.debug_struct("Native").field("usage", usage).finish(),
            Reply::NativeStream(_) => f.write_str("NativeStream"),
            Reply::Chat(response) => f.debug_tuple("Chat").field(response).finish(),
            Reply::ChatStream(_) => f.write_str("ChatStream"),
        }
    }
}

/// IR stream events in batches, each batch what one upstream read produced. The last
/// batch ends with `Done` or `Error`.
pub type ChatStream = Pin<Box<dyn Stream<Item = Vec<StreamEvent>> + Send>>;

/// Called once when a stream ends, however it ends. `Sync` so that a `&Call` can be
/// held across an await.
pub type StreamEndHook = Box<dyn FnOnce(StreamEnd) + Send + Sync>;

/// How a stream ended.
#[derive(Debug, Clone, Copy)]
pub struct StreamEnd {
    pub usage: Option<Usage>,
    pub outcome: StreamOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// The upstream finished the stream.
    Complete,
    /// The client went away; the upstream request was dropped.
    ClientGone,
    /// The upstream failed mid-stream; the client got an error event.
    UpstreamError,
}

impl StreamOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Complete => "complete",
            StreamOutcome::ClientGone => "client_gone",
            StreamOutcome::UpstreamError => "upstream_error",
        }
    }
}

/// Sends `call` to its provider.
pub async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    match call.provider.config.kind {
        ProviderType::Echo => echo::call(call).await,
        ProviderType::OpenAI | ProviderType::AzureOpenAI | ProviderType::OpenAICompatible => {
            openai::call(call).await
        }
        ProviderType::Anthropic => anthropic::call(call).await,
        ProviderType::Gemini => gemini::call(call).await,
    }
}

/// Whether a provider of `kind` takes requests from `api` clients as they are. When
/// not, the pipeline types the request as a `ChatRequest` for the adapter to translate.
pub fn speaks(kind: ProviderType, api: ClientApi) -> bool {
    match kind {
        ProviderType::OpenAI | ProviderType::AzureOpenAI | ProviderType::OpenAICompatible => {
            api == ClientApi::OpenAI
        }
        // Anthropic requests are translated too (see docs/translation.md), and echo
        // answers from the IR.
        ProviderType::Anthropic | ProviderType::Gemini | ProviderType::Echo => false,
    }
}

/// Whether a provider of `kind` has an API for `operation`.
pub fn supports(kind: ProviderType, operation: Operation) -> bool {
    match operation {
        Operation::ChatCompletions => true,
        Operation::Embeddings => !matches!(kind, ProviderType::Anthropic | ProviderType::Gemini),
    }
}

/// Upstream URLs of a provider by upstream model name and operation.
#[derive(Debug, Default)]
pub struct UpstreamUrls(HashMap<String, [Option<Url>; Endpoint::COUNT]>);

impl UpstreamUrls {
    /// Parses every URL `config` will call; none for providers answered in-process.
    pub fn for_provider(config: &Provider) -> Result<Self, url::ParseError> {
        match config.kind {
            ProviderType::Echo => Ok(Self::default()),
            ProviderType::OpenAI | ProviderType::AzureOpenAI | ProviderType::OpenAICompatible => {
                openai::urls(config)
            }
            ProviderType::Anthropic => anthropic::urls(config),
            ProviderType::Gemini => gemini::urls(config),
        }
    }

    pub fn get(&self, model: &str, endpoint: Endpoint) -> Option<&Url> {
        self.0.get(model)?[endpoint as usize].as_ref()
    }

    fn insert(&mut self, model: &str, endpoint: Endpoint, url: Url) {
        self.0.entry(model.to_string()).or_default()[endpoint as usize] = Some(url);
    }
}

/// What a URL is for. Gemini streams from a URL of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    ChatStream,
    Embeddings,
}

impl Endpoint {
    const COUNT: usize = 3;

    pub fn of(request: &Request) -> Self {
        match (request.operation, request.stream) {
            (Operation::ChatCompletions, false) => Endpoint::Chat,
            (Operation::ChatCompletions, true) => Endpoint::ChatStream,
            (Operation::Embeddings, _) => Endpoint::Embeddings,
        }
    }
}

/// Decodes an upstream event stream into IR event batches as bytes arrive: nothing is
/// held back beyond an incomplete event. Ends after `Done` or `Error`; a stream that
/// breaks or closes early ends with an `Error`.
fn decode_stream<S, D>(upstream: S, decoder: D) -> ChatStream
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
    D: StreamDecoder + Send + 'static,
{
    struct State<S, D> {
        upstream: S,
        splitter: EventSplitter,
        decoder: D,
        ended: bool,
    }
    let state = State {
        upstream,
        splitter: EventSplitter::default(),
        decoder,
        ended: false,
    };
    let batches = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.ended {
                return None;
            }
            let mut out = Vec::new();
            match state.upstream.next().await {
                Some(Ok(chunk)) => {
                    for event in state.splitter.push(&chunk) {
                        if let Some(data) = sse::data(&event) {
                            state.decoder.decode(&data, &mut out);
                        }
                    }
                }
                Some(Err(_)) => out.push(StreamEvent::Error(StreamError::upstream(
                    "upstream provider failed mid-stream",
                ))),
                None => {
                    if let Some(data) = state.splitter.remainder().and_then(|e| sse::data(&e)) {
                        state.decoder.decode(&data, &mut out);
                    }
                    state.decoder.end(&mut out);
                    if !out.iter().any(is_terminal) {
                        out.push(StreamEvent::Error(StreamError::upstream(
                            "upstream provider ended the stream before it was complete",
                        )));
                    }
                }
            }
            // Nothing may follow the first terminal event.
            if let Some(end) = out.iter().position(is_terminal) {
                out.truncate(end + 1);
                state.ended = true;
            }
            if !out.is_empty() {
                return Some((out, state));
            }
        }
    });
    Box::pin(batches)
}

fn is_terminal(event: &StreamEvent) -> bool {
    matches!(event, StreamEvent::Done | StreamEvent::Error(_))
}

/// The typed request; the pipeline types every request a provider translates.
fn typed(request: &Request) -> Result<&crate::ir::chat::ChatRequest, ProxyError> {
    request
        .chat
        .as_ref()
        .ok_or_else(|| ProxyError::BadRequest("this provider takes chat requests only".to_string()))
}
