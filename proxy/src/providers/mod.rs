//! Provider adapters: from the IR to a provider's wire format and back.
//!
//! Every HTTP adapter has the same four steps (`Adapter`): the request body to send,
//! the provider's credentials on it, the reply from a whole response, and the reply
//! from a stream; how errors read is the fifth. The exchange itself (send within a
//! deadline, map a failed status to a `ProxyError`) is shared (`exchange`). A provider
//! that speaks the client's API (`speaks`: OpenAI-shaped providers to OpenAI clients,
//! Anthropic to Anthropic clients, Gemini to Gemini clients) answers in its own bytes (`Reply::Native*`), which
//! pass through untouched (`relay` for streams); every other pairing is translated
//! through the IR.

mod anthropic;
mod count;
mod echo;
mod exchange;
mod gemini;
mod openai;
mod reads;
mod relay;
mod scrub;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Uri};
use switchboard_api::snapshot::{Provider, ProviderType};
use url::Url;

use crate::error::ProxyError;
use crate::formats::{DecodeStream, SseDecoder};
use crate::ir::chat::{ChatRequest, StreamError, StreamEvent};
use crate::ir::reply::Reply;
use crate::ir::stream::ChatStream;
use crate::ir::{ClientApi, Operation, Request, TraceHeaders};
use crate::upstream::{UpstreamClient, UpstreamResponse};
use reads::{BoundedReads, Read, UpstreamBytes, body_stream};

/// A provider's config with what calling it takes: its pooled client and upstream URLs.
#[derive(Debug)]
pub struct Upstream {
    /// `namespace/name`.
    pub id: String,
    pub config: Provider,
    pub client: UpstreamClient,
    pub urls: UpstreamUrls,
}

/// One request to one provider.
pub struct Call<'a> {
    pub request: &'a Request,
    pub upstream: &'a Upstream,
    /// The model name the provider knows (the Azure deployment for azure-openai).
    pub upstream_model: &'a str,
    /// For a whole response: the time it may take; for a stream: until its headers.
    pub timeout: Duration,
    pub request_id: &'a str,
    /// W3C trace context to send upstream.
    pub trace: TraceHeaders,
    /// What the provider may send back.
    pub limits: UpstreamLimits,
}

/// Bounds on what a provider sends back, so that a broken or hostile one cannot
/// exhaust the proxy's memory or hold a client forever.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLimits {
    /// The most bytes of a whole (not streamed) response body; past it the attempt
    /// fails (`ProxyError::UpstreamTooLarge`).
    pub max_body_bytes: usize,
    /// The most bytes of one stream event; past it the stream ends with an error.
    pub max_event_bytes: usize,
    /// The longest a stream may go without a byte from upstream; past it the stream
    /// ends with an error. Zero: no limit.
    pub stream_idle: Duration,
    /// The most bytes of a whole stream; past it the stream ends with an error.
    pub max_stream_bytes: u64,
    /// The longest a stream may last from its response headers; past it the stream
    /// ends with an error. Zero: no limit.
    pub max_stream_duration: Duration,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("provider", &self.upstream.id)
            .field("upstream_model", &self.upstream_model)
            .field("timeout", &self.timeout)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// What an HTTP provider adapter does; `exchange` does the rest.
trait Adapter {
    /// request: the body to send upstream.
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError>;
    /// The provider's credentials (and any headers its API requires, or the client
    /// sent for it) on the request.
    fn authorize(headers: &mut HeaderMap, call: &Call<'_>, key: Option<&str>);
    /// response: the reply in a whole response's body.
    fn response(call: &Call<'_>, body: Bytes) -> Result<Reply, ProxyError>;
    /// stream event: the reply in a streamed response.
    fn stream(call: &Call<'_>, response: UpstreamResponse) -> Reply;
    /// error: what an error body says.
    fn error(body: &[u8]) -> exchange::ErrorBody;
}

/// Sends `call` to its provider. A token count for a provider that cannot count is
/// estimated here instead (`count`).
pub async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    let kind = call.upstream.config.kind;
    if call.request.operation == Operation::CountTokens && kind != ProviderType::Anthropic {
        return Ok(Reply::TokenEstimate(count::estimate(&call.request.body)));
    }
    match kind {
        ProviderType::Echo => echo::call(call).await,
        ProviderType::OpenAI | ProviderType::AzureOpenAI | ProviderType::OpenAICompatible => {
            exchange::call::<openai::OpenAI>(call).await
        }
        ProviderType::Anthropic => exchange::call::<anthropic::Anthropic>(call).await,
        ProviderType::Gemini => exchange::call::<gemini::Gemini>(call).await,
    }
}

/// Whether a provider of `kind` takes requests from `api` clients as they are (only
/// the model and credentials rewritten) and answers in `api`'s own format.
pub fn speaks(kind: ProviderType, api: ClientApi) -> bool {
    match kind {
        ProviderType::OpenAI | ProviderType::AzureOpenAI => {
            matches!(api, ClientApi::OpenAI | ClientApi::Responses)
        }
        ProviderType::OpenAICompatible => api == ClientApi::OpenAI,
        ProviderType::Anthropic => api == ClientApi::Anthropic,
        ProviderType::Gemini => api == ClientApi::Gemini,
        // Echo answers from the IR.
        ProviderType::Echo => false,
    }
}

/// Whether `call` passes through (its adapter sends the client's own request and
/// answers in the provider's own bytes) rather than translates. Decided by the API
/// pair, not by whether the request was typed: a request typed for one backend of its
/// route still passes through to another that speaks its API.
fn passes_through(call: &Call<'_>) -> bool {
    speaks(call.upstream.config.kind, call.request.api)
}

/// Whether `request` must be typed as a `ChatRequest` for a provider of `kind` to
/// translate it. Token counts never are: a provider that does not speak the client's
/// API estimates them from the raw body.
pub fn translates(kind: ProviderType, request: &Request) -> bool {
    // Embeddings have no IR: a provider that has the operation (OpenAI-shaped, echo)
    // reads them as they are. Token counts are passed through or estimated.
    request.operation == Operation::ChatCompletions && !speaks(kind, request.api)
}

/// Whether a provider of `kind` has an API for `operation`.
pub fn supports(kind: ProviderType, operation: Operation) -> bool {
    match operation {
        Operation::ChatCompletions => true,
        Operation::Embeddings => !matches!(kind, ProviderType::Anthropic | ProviderType::Gemini),
        // Counted by Anthropic, estimated for the others.
        Operation::CountTokens => true,
        // Passed through to the providers that have it; translation comes with issue 24.
        Operation::Responses => matches!(kind, ProviderType::OpenAI | ProviderType::AzureOpenAI),
    }
}

/// `gen_ai.provider.name`: the GenAI conventions' names where they have one.
pub fn gen_ai_name(kind: ProviderType) -> &'static str {
    match kind {
        ProviderType::OpenAI => "openai",
        ProviderType::AzureOpenAI => "azure.ai.openai",
        ProviderType::Anthropic => "anthropic",
        ProviderType::Gemini => "gcp.gemini",
        ProviderType::OpenAICompatible => "openai_compatible",
        ProviderType::Echo => "switchboard.echo",
    }
}

/// Upstream URLs of a provider by upstream model name and operation, parsed once.
#[derive(Debug, Default)]
pub struct UpstreamUrls(HashMap<String, [Option<Uri>; Endpoint::COUNT]>);

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

    pub fn get(&self, model: &str, endpoint: Endpoint) -> Option<&Uri> {
        self.0.get(model)?[endpoint as usize].as_ref()
    }

    /// Adds `url`, checked (and normalized: a host in Unicode is written in
    /// punycode) as a URL first.
    fn insert(
        &mut self,
        model: &str,
        endpoint: Endpoint,
        url: &str,
    ) -> Result<(), url::ParseError> {
        let url = Url::parse(url)?;
        let uri =
            Uri::try_from(url.as_str()).map_err(|_| url::ParseError::InvalidDomainCharacter)?;
        self.0.entry(model.to_string()).or_default()[endpoint as usize] = Some(uri);
        Ok(())
    }
}

/// What a URL is for. Gemini streams from a URL of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    ChatStream,
    Embeddings,
    CountTokens,
    Responses,
}

impl Endpoint {
    const COUNT: usize = 5;

    pub fn of(request: &Request) -> Self {
        match (request.operation, request.stream) {
            (Operation::ChatCompletions, false) => Endpoint::Chat,
            (Operation::ChatCompletions, true) => Endpoint::ChatStream,
            (Operation::Embeddings, _) => Endpoint::Embeddings,
            (Operation::CountTokens, _) => Endpoint::CountTokens,
            (Operation::Responses, _) => Endpoint::Responses,
        }
    }
}

/// The client's body with the value of its top-level `model` replaced by `model`, and
/// every other byte as the client sent it (not re-serialized: whitespace, key order,
/// number spellings and fields the gateway does not know all reach the provider).
fn with_model(body: &Bytes, model: &str) -> Result<Bytes, ProxyError> {
    #[derive(serde::Deserialize)]
    struct Model<'a> {
        #[serde(borrow)]
        model: &'a serde_json::value::RawValue,
    }
    let unreadable = || ProxyError::BadRequest("request body has no readable 'model'".into());
    let found: Model<'_> = serde_json::from_slice(body).map_err(|_| unreadable())?;
    let raw = found.model.get().as_bytes();
    // The raw value borrows from `body`: its place in it is where its bytes are.
    let start = (raw.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|start| start + raw.len() <= body.len())
        .ok_or_else(unreadable)?;
    let name = serde_json::to_vec(model).map_err(|_| unreadable())?;
    let mut out = Vec::with_capacity(body.len() - raw.len() + name.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(&name);
    out.extend_from_slice(&body[start + raw.len()..]);
    Ok(Bytes::from(out))
}

/// Decodes the call's upstream event stream into IR event batches as bytes arrive, with
/// `decoder`. Ends after `Done` or `Error`; a stream that breaks, closes early, sends an
/// event over the size limit or goes quiet past the idle timeout ends with an `Error`.
/// Every text the provider sent (answer, tool calls, error message) is scrubbed of the
/// provider key.
fn decode_stream<D>(call: &Call<'_>, response: UpstreamResponse, decoder: D) -> ChatStream
where
    D: DecodeStream + Send + 'static,
{
    let (upstream, limits) = (body_stream(response), call.limits);
    let key = exchange::key(call.upstream);
    struct State<D> {
        upstream: BoundedReads<UpstreamBytes>,
        decoder: SseDecoder<D>,
        key: Option<String>,
        ended: bool,
    }
    let state = State {
        upstream: BoundedReads::new(upstream, &limits),
        decoder: SseDecoder::with_limit(decoder, limits.max_event_bytes),
        key: key.map(str::to_string),
        ended: false,
    };
    let batches = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.ended {
                return None;
            }
            let mut out = Vec::new();
            match state.upstream.next().await {
                Read::Chunk(chunk) => state.decoder.push(&chunk, &mut out),
                Read::Over(error) => out.push(StreamEvent::Error(error)),
                Read::Broken => out.push(StreamEvent::Error(StreamError::broken())),
                Read::End => {
                    state.decoder.finish(&mut out);
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
            for event in &mut out {
                scrub_event(event, state.key.as_deref());
            }
            if !out.is_empty() {
                return Some((out, state));
            }
        }
    });
    Box::pin(batches)
}

/// Takes `key` out of every text of a decoded event (decoded: escapes are already
/// read). A key split across two events is not seen.
fn scrub_event(event: &mut StreamEvent, key: Option<&str>) {
    if key.is_none() {
        return;
    }
    match event {
        StreamEvent::Start { id, model, .. } => {
            scrub::string(id, key);
            scrub::string(model, key);
        }
        StreamEvent::Text(text) => scrub::string(text, key),
        StreamEvent::ToolCallStart { id, name, .. } => {
            scrub::string(id, key);
            scrub::string(name, key);
        }
        StreamEvent::ToolCallArguments { arguments, .. } => scrub::string(arguments, key),
        StreamEvent::Error(error) => scrub::string(&mut error.message, key),
        StreamEvent::Finish(_) | StreamEvent::Usage(_) | StreamEvent::Done => {}
    }
}

fn is_terminal(event: &StreamEvent) -> bool {
    matches!(event, StreamEvent::Done | StreamEvent::Error(_))
}

/// The typed request; the pipeline types every request a provider translates.
fn typed(request: &Request) -> Result<&ChatRequest, ProxyError> {
    request
        .chat
        .as_ref()
        .ok_or_else(|| ProxyError::BadRequest("this provider takes chat requests only".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_model_changes_only_the_model_value() {
        let body = Bytes::from_static(
            b"{ \"max_tokens\": 1.0e3,\n \"model\" : \"smart\", \"x\":{\"model\":\"inner\"}}",
        );
        let out = with_model(&body, "claude-\"q\"").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{ \"max_tokens\": 1.0e3,\n \"model\" : \"claude-\\\"q\\\"\", \"x\":{\"model\":\"inner\"}}"
        );
        assert!(with_model(&Bytes::from_static(b"{\"model\":1"), "m").is_err());
        assert!(with_model(&Bytes::from_static(b"{}"), "m").is_err());
    }
}
