//! Provider adapters: from the IR to a provider's wire format and back.
//!
//! Each adapter takes a `Call` and returns a `Reply`: a whole response, or a stream of
//! server-sent events already in the client's (OpenAI's) format. Streams report how
//! they ended, with usage, through the call's `on_stream_end` hook.

mod echo;
mod openai;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use switchboard_api::snapshot::{Provider, ProviderType};
use tokio::sync::mpsc;
use url::Url;

use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::ir::{Operation, Request, Usage};
use crate::runtime::ProviderRuntime;

/// One request to one provider.
pub struct Call<'a> {
    pub request: &'a Request,
    pub provider: &'a ProviderRuntime,
    /// The model name the provider knows (the Azure deployment for azure-openai).
    pub upstream_model: &'a str,
    /// For a whole response: the time it may take; for a stream: until its headers.
    pub timeout: Duration,
    pub request_id: &'a str,
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
#[derive(Debug)]
pub enum Reply {
    /// A whole JSON response, with the usage read from it.
    Complete { body: Bytes, usage: Option<Usage> },
    /// Server-sent events, forwarded as they arrive.
    Stream(Body),
}

/// Called once when a stream ends, however it ends.
pub type StreamEndHook = Box<dyn FnOnce(StreamEnd) + Send>;

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
    }
}

/// Upstream URLs of a provider by upstream model name and operation.
#[derive(Debug, Default)]
pub struct UpstreamUrls(HashMap<String, [Option<Url>; Operation::ALL.len()]>);

impl UpstreamUrls {
    /// Parses every URL `config` will call; none for providers answered in-process.
    pub fn for_provider(config: &Provider) -> Result<Self, url::ParseError> {
        match config.kind {
            ProviderType::Echo => Ok(Self::default()),
            ProviderType::OpenAI | ProviderType::AzureOpenAI | ProviderType::OpenAICompatible => {
                openai::urls(config)
            }
        }
    }

    pub fn get(&self, model: &str, operation: Operation) -> Option<&Url> {
        self.0.get(model)?[operation as usize].as_ref()
    }

    fn insert(&mut self, model: &str, operation: Operation, url: Url) {
        self.0.entry(model.to_string()).or_default()[operation as usize] = Some(url);
    }
}

/// Events sent to the client from a producer task, with backpressure.
const STREAM_BUFFER: usize = 16;

/// A channel whose receiving end is a response body.
fn stream_channel() -> (mpsc::Sender<Result<Bytes, BoxError>>, Body) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(STREAM_BUFFER);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map(Frame::data), rx))
    });
    (tx, StreamBody::new(frames.boxed()).boxed_unsync())
}
