//! The `gemini` provider: Google's Generative Language API.
//!
//! Gemini clients' requests pass through byte for byte (the model is in the URL, which
//! the gateway writes; the provider key replaces the client's); answers and stream
//! events come back as sent (scrubbed of the key), their `usageMetadata` read on the
//! way. Requests from other client APIs are translated through the IR.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use switchboard_api::snapshot::Provider;

use super::exchange::{self, ErrorBody};
use super::{Adapter, Call, Endpoint, UpstreamUrls, decode_stream, relay};
use crate::error::ProxyError;
use crate::formats::gemini as format;
use crate::ir::reply::Reply;
use crate::ir::{ClientApi, Usage};
use crate::sse;
use crate::upstream::UpstreamResponse;

/// Google's Generative Language API.
pub(super) struct Gemini;

impl Adapter for Gemini {
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError> {
        if super::passes_through(call) {
            // The body names no model (the URL does): nothing in it changes.
            return Ok(call.request.body.clone());
        }
        format::write_request(super::typed(call.request)?)
    }

    fn authorize(headers: &mut HeaderMap, _: &Call<'_>, key: Option<&str>) {
        if let Some(key) = key {
            exchange::put_secret(headers, HeaderName::from_static("x-goog-api-key"), key);
        }
    }

    fn response(call: &Call<'_>, body: Bytes) -> Result<Reply, ProxyError> {
        if !super::passes_through(call) {
            return Ok(Reply::Chat(format::parse_response(&body)?));
        }
        let usage = format::response_usage(&body);
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
        Reply::NativeStream(relay::stream(call, response, Events))
    }

    fn error(body: &[u8]) -> ErrorBody {
        let message = format::parse_error(body);
        ErrorBody {
            // Gemini clients get Google's own error body.
            native: message.is_some().then_some(ClientApi::Gemini),
            message,
            bad_key: format::is_bad_key(body),
        }
    }
}

/// Reads usage from a passed-through stream: Gemini puts `usageMetadata` (so far) in
/// its events, the last one the whole. Every event is forwarded.
struct Events;

impl relay::Events for Events {
    fn read(&mut self, event: Bytes, usage: &mut Option<Usage>) -> Option<Bytes> {
        // Cheap test first: only events with usage are parsed.
        if memchr::memmem::find(&event, b"\"usageMetadata\"").is_some()
            && let Ok(Some(data)) = sse::data(&event)
            && let Some(read) = format::response_usage(data.as_bytes())
        {
            *usage = Some(read);
        }
        Some(event)
    }
}
/// `{endpoint}/models/{model}:generateContent`, and `:streamGenerateContent?alt=sse`
/// for streams (server-sent events rather than one JSON array).
pub(super) fn urls(config: &Provider) -> Result<UpstreamUrls, url::ParseError> {
    let mut urls = UpstreamUrls::default();
    for model in config.models.values() {
        let name = model.upstream_name.trim_start_matches("models/");
        let escaped: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let base = format!("{}/models/{escaped}", config.endpoint);
        urls.insert(
            &model.upstream_name,
            Endpoint::Chat,
            &format!("{base}:generateContent"),
        )?;
        urls.insert(
            &model.upstream_name,
            Endpoint::ChatStream,
            &format!("{base}:streamGenerateContent?alt=sse"),
        )?;
    }
    Ok(urls)
}
