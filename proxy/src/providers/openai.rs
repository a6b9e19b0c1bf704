//! OpenAI-shaped providers: `openai`, `openai-compatible` and `azure-openai`.
//!
//! For OpenAI clients, requests pass through with only what must change rewritten: the
//! model name, the credentials, and (for streams) `stream_options.include_usage`, so
//! usage can be metered. Responses and stream events are forwarded byte for byte,
//! except the final usage-only chunk when the gateway, not the client, asked for it.
//! Requests from other client APIs are translated through the IR.

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use switchboard_api::snapshot::{Provider, ProviderType};

use super::exchange::{self, ErrorBody};
use super::{Adapter, BoundedReads, Call, Endpoint, Read, UpstreamUrls, decode_stream, scrub};
use crate::error::ProxyError;
use crate::formats::openai as format;
use crate::ir::chat::StreamError;
use crate::ir::reply::Reply;
use crate::ir::stream::{NativeChunk, NativeStream};
use crate::ir::{ClientApi, Operation, Request, Usage};
use crate::sse::{self, EventSplitter};

/// OpenAI's API, and every API shaped like it.
pub(super) struct OpenAI;

impl Adapter for OpenAI {
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError> {
        let request = call.request;
        match &request.chat {
            // Another client API: translated.
            Some(chat) => Ok(format::write_request(
                chat,
                call.upstream_model,
                request.stream,
            )),
            None if call.upstream_model == request.model && !injects_usage(request) => {
                Ok(request.body.clone())
            }
            None => rewrite(request, call.upstream_model, injects_usage(request)),
        }
    }

    fn authorize(
        builder: reqwest::RequestBuilder,
        config: &Provider,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match key {
            Some(key) if config.kind == ProviderType::AzureOpenAI => builder.header("api-key", key),
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    fn response(call: &Call<'_>, body: Bytes) -> Result<Reply, ProxyError> {
        if call.request.chat.is_some() {
            return Ok(Reply::Chat(format::parse_response(&body)?));
        }
        let usage = serde_json::from_slice::<UsageOnly>(&body)
            .ok()
            .and_then(|u| u.usage);
        Ok(Reply::Native { body, usage })
    }

    fn stream(call: &Call<'_>, response: reqwest::Response) -> Reply {
        if call.request.chat.is_some() {
            return Reply::ChatStream(decode_stream(
                response.bytes_stream(),
                format::StreamDecoder::default(),
                call.limits,
                exchange::key(call.upstream),
            ));
        }
        let relay = EventRelay {
            upstream: BoundedReads::new(response.bytes_stream(), &call.limits),
            splitter: EventSplitter::with_limit(call.limits.max_event_bytes),
            inject_usage: injects_usage(call.request),
            key: exchange::key(call.upstream).map(str::to_string),
            ended: false,
            failed: None,
        };
        Reply::NativeStream(relay.into_stream())
    }

    fn error(body: &[u8]) -> ErrorBody {
        match format::parse_error(body) {
            Some(message) => ErrorBody {
                message,
                native: Some(ClientApi::OpenAI),
                bad_key: false,
            },
            None => ErrorBody::default(),
        }
    }
}

/// Whether the gateway asks for the stream's usage on the client's behalf (to meter
/// it); the usage-only chunk this adds is taken out before the client sees it.
fn injects_usage(request: &Request) -> bool {
    request.stream && !request.client_wants_usage
}

/// Relays upstream events as the client's connection asks for them: no task or
/// channel in between, so each event costs one poll, not two task wake-ups. Splits the
/// bytes into whole events, reads usage from them, and takes out the usage-only chunk
/// the gateway asked for. Dropped early (the client left), it drops the upstream
/// request with it.
struct EventRelay<S> {
    upstream: BoundedReads<S>,
    splitter: EventSplitter,
    inject_usage: bool,
    /// The provider key, scrubbed from every event (whole events: a key split across
    /// reads is still seen).
    key: Option<String>,
    ended: bool,
    /// The error to end with, after the events read before it.
    failed: Option<StreamError>,
}

impl<S> EventRelay<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
{
    fn into_stream(self) -> NativeStream {
        Box::pin(futures_util::stream::unfold(self, |mut relay| async move {
            let chunk = relay.next_chunk().await?;
            Some((chunk, relay))
        }))
    }

    /// The events of the next upstream read that carries any to forward (or usage).
    async fn next_chunk(&mut self) -> Option<NativeChunk> {
        if self.ended {
            return self.failed.take().map(NativeChunk::Failed);
        }
        loop {
            match self.upstream.next().await {
                Read::Chunk(chunk) => {
                    let mut usage = None;
                    let mut events = Vec::new();
                    let mut failed = None;
                    for event in self.splitter.push(&chunk) {
                        // Passed through, an event is still checked as a translated
                        // one is read: one rule for every stream (and whole body).
                        if sse::check_utf8(&event).is_err() {
                            failed = Some(StreamError::upstream(sse::NOT_UTF8_MESSAGE));
                            break;
                        }
                        if let Some(event) = stream_event(event, self.inject_usage, &mut usage) {
                            events.push(scrub::bytes(event, self.key.as_deref()));
                        }
                    }
                    if failed.is_none() && self.splitter.too_large() {
                        failed = Some(StreamError::upstream(sse::too_large_message(
                            self.splitter.max_event(),
                        )));
                    }
                    if let Some(error) = failed {
                        // What came before the event that failed is still the client's;
                        // the error follows on the next poll.
                        self.ended = true;
                        self.failed = Some(error);
                        if events.is_empty() && usage.is_none() {
                            return self.failed.take().map(NativeChunk::Failed);
                        }
                    }
                    if !events.is_empty() || usage.is_some() {
                        return Some(NativeChunk::Events { events, usage });
                    }
                }
                Read::Over(error) => {
                    self.ended = true;
                    return Some(NativeChunk::Failed(error));
                }
                Read::Broken => {
                    self.ended = true;
                    return Some(NativeChunk::Broken);
                }
                Read::End => {
                    self.ended = true;
                    let rest = self.splitter.remainder()?;
                    if sse::check_utf8(&rest).is_err() {
                        return Some(NativeChunk::Failed(StreamError::upstream(
                            sse::NOT_UTF8_MESSAGE,
                        )));
                    }
                    return Some(NativeChunk::Events {
                        events: vec![scrub::bytes(rest, self.key.as_deref())],
                        usage: None,
                    });
                }
            }
        }
    }
}

/// Reads usage from a stream event; returns the event to forward, or `None` to drop
/// the usage-only chunk the gateway asked for on the client's behalf.
fn stream_event(event: Bytes, injected_usage: bool, usage: &mut Option<Usage>) -> Option<Bytes> {
    // Cheap test first: most chunks carry no usage (or `"usage":null`).
    if !contains(&event, b"\"usage\":{") && !contains(&event, b"\"usage\": {") {
        return Some(event);
    }
    let chunk = sse::data(&event)
        .ok()
        .flatten()
        .and_then(|d| serde_json::from_str::<UsageChunk>(&d).ok());
    let Some(chunk) = chunk else {
        return Some(event);
    };
    if chunk.usage.is_some() {
        *usage = chunk.usage;
    }
    let usage_only = chunk.choices.is_none_or(|c| c.is_empty());
    (!(injected_usage && usage_only)).then_some(event)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct UsageChunk {
    usage: Option<Usage>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// The upstream URL of every model and operation, parsed once when the runtime is
/// built: parsing a URL on every request costs more than the rest of routing.
pub(super) fn urls(config: &Provider) -> Result<UpstreamUrls, url::ParseError> {
    let mut urls = UpstreamUrls::default();
    for model in config.models.values() {
        for (endpoint, operation) in [
            (Endpoint::Chat, Operation::ChatCompletions),
            (Endpoint::ChatStream, Operation::ChatCompletions),
            (Endpoint::Embeddings, Operation::Embeddings),
        ] {
            let url = match config.kind {
                ProviderType::AzureOpenAI => format!(
                    "{}/openai/deployments/{}{}?api-version={}",
                    config.endpoint,
                    url::form_urlencoded::byte_serialize(model.upstream_name.as_bytes())
                        .collect::<String>(),
                    operation.path(),
                    config.azure_api_version.as_deref().unwrap_or_default()
                ),
                _ => format!("{}{}", config.endpoint, operation.path()),
            };
            urls.insert(&model.upstream_name, endpoint, url.parse()?);
        }
    }
    Ok(urls)
}

/// Re-serializes the request with the upstream model name and, if `inject_usage`,
/// `stream_options.include_usage: true`. Other fields are written back verbatim.
fn rewrite(request: &Request, model: &str, inject_usage: bool) -> Result<Bytes, ProxyError> {
    let body = Rewritten {
        request,
        model,
        inject_usage,
    };
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ProxyError::BadRequest(format!("cannot forward the request: {e}")))
}

struct Rewritten<'a> {
    request: &'a Request,
    model: &'a str,
    inject_usage: bool,
}

impl Serialize for Rewritten<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = &self.request.fields;
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in fields {
            match name.as_str() {
                "model" => map.serialize_entry(name, self.model)?,
                "stream_options" if self.inject_usage => {
                    let mut options: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(value.get()).unwrap_or_default();
                    options.insert("include_usage".into(), true.into());
                    map.serialize_entry(name, &options)?;
                }
                _ => map.serialize_entry(name, value)?,
            }
        }
        if self.inject_usage && !fields.contains_key("stream_options") {
            map.serialize_entry(
                "stream_options",
                &serde_json::json!({"include_usage": true}),
            )?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_api::openai::read_request;
    use crate::ir::Operation;

    #[test]
    fn rewrite_changes_only_model_and_stream_options() {
        let body = Bytes::from_static(
            br#"{"model":"smart","messages":[{"role":"user","content":"hi"}],"temperature":0.25,"stream":true,"x_custom":{"keep":[1,2]}}"#,
        );
        let request = read_request(Operation::ChatCompletions, body).unwrap();
        let out = rewrite(&request, "gpt-4o-2024-08-06", true).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"gpt-4o-2024-08-06","messages":[{"role":"user","content":"hi"}],"temperature":0.25,"stream":true,"x_custom":{"keep":[1,2]},"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn rewrite_merges_existing_stream_options() {
        let body = Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false,"other":1}}"#,
        );
        let request = read_request(Operation::ChatCompletions, body).unwrap();
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite(&request, "m", true).unwrap()).unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"include_usage": true, "other": 1})
        );
    }

    #[test]
    fn drops_only_the_injected_usage_chunk() {
        let content = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n",
        );
        let usage_chunk = Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\n",
        );
        let mut usage = None;
        assert_eq!(
            stream_event(content.clone(), true, &mut usage),
            Some(content)
        );
        assert_eq!(usage, None);
        assert_eq!(stream_event(usage_chunk.clone(), true, &mut usage), None);
        assert_eq!(usage.unwrap().total_tokens, 8);
        let mut usage = None;
        assert_eq!(
            stream_event(usage_chunk.clone(), false, &mut usage),
            Some(usage_chunk)
        );
        assert_eq!(usage.unwrap().completion_tokens, 5);
    }

    /// Passed through, an answer's usage is still read for metering when some of its
    /// fields are `null` (before, the whole usage was lost).
    #[test]
    fn reads_usage_with_null_fields_from_passed_through_answers() {
        let chunk = Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":null,\"total_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":null},\"completion_tokens_details\":null}}\n\n",
        );
        let mut usage = None;
        assert_eq!(stream_event(chunk, true, &mut usage), None);
        assert_eq!(usage.unwrap().prompt_tokens, 3);
        let whole: UsageOnly = serde_json::from_str(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(whole.usage.unwrap().completion_tokens, 2);
    }
}
