//! OpenAI-shaped providers: `openai`, `openai-compatible` and `azure-openai`.
//!
//! For OpenAI clients, requests pass through with only what must change rewritten: the
//! model name, the credentials, and (for streams) `stream_options.include_usage`, so
//! usage can be metered. Responses and stream events are forwarded byte for byte,
//! except the final usage-only chunk when the gateway, not the client, asked for it.
//! Requests from other client APIs are translated through the IR.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use switchboard_api::snapshot::{Provider, ProviderType};

use super::exchange::{self, ErrorFormat};
use super::{
    Call, Endpoint, Reply, StreamEnd, StreamEndHook, StreamOutcome, UpstreamUrls, decode_stream,
};
use crate::body::Body;
use crate::error::ProxyError;
use crate::formats::openai;
use crate::ir::{Operation, Request, Usage};
use crate::quota::StreamBudget;
use crate::sse::{self, EventSplitter};

pub(super) async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    let request = call.request;
    let inject_usage = request.stream && !request.client_wants_usage;
    let body = match &request.chat {
        // Another client API: translated.
        Some(chat) => openai::write_request(chat, call.upstream_model, request.stream),
        None if call.upstream_model == request.model && !inject_usage => request.body.clone(),
        None => rewrite(request, call.upstream_model, inject_usage)?,
    };

    let kind = call.provider.config.kind;
    let response = exchange::post(&call, body, ErrorFormat::OpenAI, |builder, key| match key {
        Some(key) if kind == ProviderType::AzureOpenAI => builder.header("api-key", key),
        Some(key) => builder.bearer_auth(key),
        None => builder,
    })
    .await?;

    match (request.stream, request.chat.is_some()) {
        (false, false) => {
            let body = exchange::body(response, call.timeout).await?;
            let usage = serde_json::from_slice::<UsageOnly>(&body)
                .ok()
                .and_then(|u| u.usage);
            Ok(Reply::Native { body, usage })
        }
        (false, true) => {
            let body = exchange::body(response, call.timeout).await?;
            Ok(Reply::Chat(openai::parse_response(&body)?))
        }
        (true, false) => {
            let relay = EventRelay {
                upstream: response.bytes_stream(),
                splitter: EventSplitter::default(),
                inject_usage,
                usage: None,
                meter: call.budget.map(|budget| Meter {
                    budget,
                    first: None,
                    input_tokens: request.body.len().div_ceil(4) as u64,
                }),
                on_end: Some(call.on_stream_end),
            };
            Ok(Reply::NativeStream(relay.into_body()))
        }
        (true, true) => Ok(Reply::ChatStream(decode_stream(
            response.bytes_stream(),
            openai::ChunkDecoder::default(),
        ))),
    }
}

/// Relays upstream events to the client as the client's connection asks for them: no
/// task or channel in between, so each event costs one poll, not two task wake-ups.
/// Reports the stream's end once, however it ends; dropped early (the client left),
/// it drops the upstream request with it.
struct EventRelay<S> {
    upstream: S,
    splitter: EventSplitter,
    inject_usage: bool,
    usage: Option<Usage>,
    /// Under a quota that cuts streams: what the stream may still produce.
    meter: Option<Meter>,
    on_end: Option<StreamEndHook>,
}

/// Counts a relayed stream's output against its budget, and remembers what the final
/// chunk of a cut stream needs (the stream's id, creation time and model).
struct Meter {
    budget: StreamBudget,
    first: Option<ChunkHead>,
    /// The request's input, estimated, for the usage of a cut stream.
    input_tokens: u64,
}

const MID_STREAM_ERROR: &str = r#"{"error":{"message":"upstream provider failed mid-stream","type":"upstream_error","param":null,"code":"upstream_stream_error"}}"#;

impl<S> EventRelay<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
{
    fn into_body(self) -> Body {
        let events = futures_util::stream::unfold(self, |mut relay| async move {
            let events = relay.next_events().await?;
            Some((Ok(Frame::data(events)), relay))
        });
        StreamBody::new(events).boxed_unsync()
    }

    /// The events of the next upstream chunk that carries any to forward.
    async fn next_events(&mut self) -> Option<Bytes> {
        self.on_end.as_ref()?;
        loop {
            match self.upstream.next().await {
                Some(Ok(chunk)) => {
                    let (inject_usage, usage) = (self.inject_usage, &mut self.usage);
                    let events = self.splitter.push(&chunk).into_iter();
                    let forward = events.filter_map(|e| stream_event(e, inject_usage, usage));
                    let forward = match &mut self.meter {
                        None => sse::join(forward),
                        Some(meter) => {
                            let mut kept = Vec::new();
                            let mut cut = false;
                            for event in forward {
                                cut = meter.count(&event);
                                kept.push(event);
                                if cut {
                                    break;
                                }
                            }
                            if cut {
                                return Some(self.cut(kept));
                            }
                            sse::join(kept)
                        }
                    };
                    if let Some(events) = forward {
                        return Some(events);
                    }
                }
                Some(Err(_)) => {
                    self.end(StreamOutcome::UpstreamError);
                    return Some(sse::event(MID_STREAM_ERROR));
                }
                None => {
                    self.end(StreamOutcome::Complete);
                    return self.splitter.remainder();
                }
            }
        }
    }
}

impl<S> EventRelay<S> {
    /// The budget is spent: `kept` and a final chunk with finish reason `length` (and a
    /// usage chunk if the client asked for usage), then `[DONE]`; the upstream request
    /// is dropped with the relay.
    fn cut(&mut self, kept: Vec<Bytes>) -> Bytes {
        let Some(meter) = &self.meter else {
            return sse::join(kept).unwrap_or_default();
        };
        let head = meter.first.clone().unwrap_or_default();
        let usage = Usage {
            prompt_tokens: meter.input_tokens,
            completion_tokens: meter.budget.tokens(),
            total_tokens: meter.input_tokens + meter.budget.tokens(),
            prompt_tokens_details: None,
        };
        let mut out: Vec<Bytes> = kept;
        let finish = serde_json::json!({
            "id": head.id, "object": "chat.completion.chunk", "created": head.created,
            "model": head.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        });
        out.push(sse::event(&finish.to_string()));
        if !self.inject_usage {
            let usage_chunk = serde_json::json!({
                "id": head.id, "object": "chat.completion.chunk", "created": head.created,
                "model": head.model, "choices": [],
                "usage": {"prompt_tokens": usage.prompt_tokens,
                          "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens},
            });
            out.push(sse::event(&usage_chunk.to_string()));
        }
        out.push(sse::event("[DONE]"));
        self.usage = Some(usage);
        self.end(StreamOutcome::Complete);
        sse::join(out).unwrap_or_default()
    }

    fn end(&mut self, outcome: StreamOutcome) {
        if let Some(on_end) = self.on_end.take() {
            on_end(StreamEnd {
                usage: self.usage,
                outcome,
            });
        }
    }
}

impl<S> Drop for EventRelay<S> {
    fn drop(&mut self) {
        self.end(StreamOutcome::ClientGone);
    }
}

/// Reads usage from a stream event; returns the event to forward, or `None` to drop
/// the usage-only chunk the gateway asked for on the client's behalf.
fn stream_event(event: Bytes, injected_usage: bool, usage: &mut Option<Usage>) -> Option<Bytes> {
    // Cheap test first: most chunks carry no usage (or `"usage":null`).
    if !contains(&event, b"\"usage\":{") && !contains(&event, b"\"usage\": {") {
        return Some(event);
    }
    let chunk = sse::data(&event).and_then(|d| serde_json::from_str::<UsageChunk>(&d).ok());
    let Some(chunk) = chunk else {
        return Some(event);
    };
    if chunk.usage.is_some() {
        *usage = chunk.usage;
    }
    let usage_only = chunk.choices.is_none_or(|c| c.is_empty());
    (!(injected_usage && usage_only)).then_some(event)
}

impl Meter {
    /// Counts an event's output text; true once the budget is spent.
    fn count(&mut self, event: &[u8]) -> bool {
        let Some(chunk) = sse::data(event).and_then(|d| serde_json::from_str::<TextChunk>(&d).ok())
        else {
            return false;
        };
        if self.first.is_none() {
            self.first = Some(chunk.head.clone());
        }
        let bytes: usize = chunk
            .choices
            .iter()
            .map(|c| {
                let content = c.delta.content.as_deref().map_or(0, str::len);
                let arguments: usize = c
                    .delta
                    .tool_calls
                    .iter()
                    .flatten()
                    .filter_map(|t| t.function.as_ref()?.arguments.as_deref())
                    .map(str::len)
                    .sum();
                content + arguments
            })
            .sum();
        bytes > 0 && self.budget.spend(bytes)
    }
}

/// What a cut stream's final chunk repeats from the stream.
#[derive(Deserialize, Clone, Default)]
struct ChunkHead {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    model: String,
}

/// The output text of a stream chunk.
#[derive(Deserialize)]
struct TextChunk {
    #[serde(flatten)]
    head: ChunkHead,
    #[serde(default)]
    choices: Vec<TextChoice>,
}

#[derive(Deserialize)]
struct TextChoice {
    #[serde(default)]
    delta: TextDelta,
}

#[derive(Deserialize, Default)]
struct TextDelta {
    content: Option<String>,
    tool_calls: Option<Vec<TextToolCall>>,
}

#[derive(Deserialize)]
struct TextToolCall {
    function: Option<TextFunction>,
}

#[derive(Deserialize)]
struct TextFunction {
    arguments: Option<String>,
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
    use crate::client_api::openai::parse_request;
    use crate::ir::Operation;

    #[test]
    fn rewrite_changes_only_model_and_stream_options() {
        let body = Bytes::from_static(
            br#"{"model":"smart","messages":[{"role":"user","content":"hi"}],"temperature":0.25,"stream":true,"x_custom":{"keep":[1,2]}}"#,
        );
        let request = parse_request(Operation::ChatCompletions, body).unwrap();
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
        let request = parse_request(Operation::ChatCompletions, body).unwrap();
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
}
