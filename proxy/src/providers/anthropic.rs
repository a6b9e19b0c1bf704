//! The `anthropic` provider: Anthropic's Messages API.
//!
//! Anthropic clients' requests (messages and token counts) pass through byte for byte
//! with only the model rewritten, with the client's `anthropic-version` and
//! `anthropic-beta` headers and the provider key; answers and stream events come back
//! as sent (scrubbed of the key), their usage read on the way. Requests from other
//! client APIs are translated through the IR.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use switchboard_api::snapshot::Provider;

use super::exchange::{self, ErrorBody};
use super::{Adapter, Call, Endpoint, UpstreamUrls, decode_stream, relay};
use crate::error::ProxyError;
use crate::formats::anthropic as format;
use crate::ir::chat::StreamEvent;
use crate::ir::reply::Reply;
use crate::ir::{ClientApi, Operation, Usage};
use crate::sse;
use crate::upstream::UpstreamResponse;

/// The API version header; the client's when it passes one through, else the
/// provider's configured version.
const VERSION: &str = "anthropic-version";

/// Anthropic's Messages API.
pub(super) struct Anthropic;

impl Adapter for Anthropic {
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError> {
        let request = call.request;
        if super::passes_through(call) {
            return super::with_model(&request.body, call.upstream_model);
        }
        format::write_request(
            super::typed(request)?,
            call.upstream_model,
            request.stream,
            call.upstream.config.anthropic.default_max_tokens,
        )
    }

    fn authorize(headers: &mut HeaderMap, call: &Call<'_>, key: Option<&str>) {
        let request = call.request;
        let mut version_sent = false;
        // A translated request is written for the provider's configured version, and
        // has no client headers of this API anyway.
        if super::passes_through(call) {
            for (name, value) in &request.api_headers {
                version_sent |= name == VERSION;
                headers.append(name, value.clone());
            }
        }
        if !version_sent
            && let Ok(version) = HeaderValue::from_str(&call.upstream.config.anthropic.version)
        {
            headers.insert(VERSION, version);
        }
        if let Some(key) = key {
            exchange::put_secret(headers, HeaderName::from_static("x-api-key"), key);
        }
    }

    fn response(call: &Call<'_>, body: Bytes) -> Result<Reply, ProxyError> {
        let request = call.request;
        if !super::passes_through(call) {
            return Ok(Reply::Chat(format::parse_response(&body)?));
        }
        // A token count is not usage: it spent nothing.
        let usage = match request.operation {
            Operation::CountTokens => None,
            _ => format::response_usage(&body),
        };
        Ok(Reply::Native { body, usage })
    }

    fn stream(call: &Call<'_>, response: UpstreamResponse) -> Reply {
        if !super::passes_through(call) {
            return Reply::ChatStream(decode_stream(
                call,
                response,
                format::StreamDecoder::default(),
            ));
        }
        let events = Events::default();
        Reply::NativeStream(relay::stream(call, response, events))
    }

    fn error(body: &[u8]) -> ErrorBody {
        match format::parse_error(body) {
            Some(message) => ErrorBody {
                message: Some(message),
                native: Some(ClientApi::Anthropic),
                bad_key: false,
            },
            None => ErrorBody::default(),
        }
    }
}

/// Reads usage from a passed-through stream: `message_start` (input, cache reads and
/// writes) and `message_delta` (output), read by the same decoder that translates
/// Anthropic streams, so usage means the same either way. Every event is forwarded.
#[derive(Default)]
struct Events {
    decoder: format::StreamDecoder,
    read: Vec<StreamEvent>,
}

impl relay::Events for Events {
    fn read(&mut self, event: Bytes, usage: &mut Option<Usage>) -> Option<Bytes> {
        // Cheap test first: only those two events carry usage.
        if memchr::memmem::find(&event, b"\"usage\"").is_none() {
            return Some(event);
        }
        if let Ok(Some(data)) = sse::data(&event) {
            self.read.clear();
            self.decoder.decode(&data, &mut self.read);
            for read in self.read.drain(..) {
                match read {
                    StreamEvent::Start { usage: Some(u), .. } | StreamEvent::Usage(u) => {
                        *usage = Some(u);
                    }
                    _ => {}
                }
            }
        }
        Some(event)
    }
}

/// `{endpoint}/messages` (and `/messages/count_tokens`) for every model: the model is
/// named in the body.
pub(super) fn urls(config: &Provider) -> Result<UpstreamUrls, url::ParseError> {
    let mut urls = UpstreamUrls::default();
    let messages = format!("{}/messages", config.endpoint);
    let count = format!("{}/messages/count_tokens", config.endpoint);
    for model in config.models.values() {
        urls.insert(&model.upstream_name, Endpoint::Chat, &messages)?;
        urls.insert(&model.upstream_name, Endpoint::ChatStream, &messages)?;
        urls.insert(&model.upstream_name, Endpoint::CountTokens, &count)?;
    }
    Ok(urls)
}
