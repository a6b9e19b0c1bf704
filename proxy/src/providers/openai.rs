//! OpenAI-shaped providers: `openai`, `openai-compatible` and `azure-openai`.
//!
//! For OpenAI clients, requests pass through with only what must change rewritten: the
//! model name, the credentials, and (for streams) `stream_options.include_usage`, so
//! usage can be metered. Responses and stream events are forwarded byte for byte,
//! except the final usage-only chunk when the gateway, not the client, asked for it.
//! Requests from other client APIs are translated through the IR.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use switchboard_api::snapshot::{Provider, ProviderType};

use super::exchange::{self, ErrorBody};
use super::{Adapter, Call, Endpoint, UpstreamUrls, decode_stream, relay};
use crate::error::ProxyError;
use crate::formats::{openai as format, responses};
use crate::ir::reply::Reply;
use crate::ir::{ClientApi, Operation, Request, Usage};
use crate::sse;
use crate::upstream::UpstreamResponse;

/// OpenAI's API, and every API shaped like it.
pub(super) struct OpenAI;

impl Adapter for OpenAI {
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError> {
        let request = call.request;
        if !super::passes_through(call) {
            // Another client API: translated.
            return Ok(format::write_request(
                super::typed(request)?,
                call.upstream_model,
                request.stream,
            ));
        }
        let inject = injects_usage(request);
        if inject && request.fields.contains_key("stream_options") {
            // The client's own `stream_options`, without `include_usage`: rewritten.
            return rewrite(request, call.upstream_model, true);
        }
        // Otherwise spliced: the client's bytes, the model's value replaced, the usage
        // asked for in a field put first.
        let body = match call.upstream_model == request.model {
            true => request.body.clone(),
            false => super::with_model(&request.body, call.upstream_model)?,
        };
        Ok(match inject {
            true => with_usage_asked(&body),
            false => body,
        })
    }

    fn authorize(headers: &mut HeaderMap, call: &Call<'_>, key: Option<&str>) {
        let Some(key) = key else {
            return;
        };
        if call.upstream.config.kind == ProviderType::AzureOpenAI {
            exchange::put_secret(headers, HeaderName::from_static("api-key"), key);
        } else {
            exchange::put_secret(headers, header::AUTHORIZATION, &format!("Bearer {key}"));
        }
    }

    fn response(call: &Call<'_>, body: Bytes) -> Result<Reply, ProxyError> {
        if !super::passes_through(call) {
            return Ok(Reply::Chat(format::parse_response(&body)?));
        }
        let usage = match call.request.api {
            ClientApi::Responses => responses::usage_of_response(&body),
            _ => serde_json::from_slice::<UsageOnly>(&body)
                .ok()
                .and_then(|u| u.usage),
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
        if call.request.api == ClientApi::Responses {
            return Reply::NativeStream(relay::stream(call, response, ResponsesEvents));
        }
        let events = Chunks {
            inject_usage: injects_usage(call.request),
        };
        Reply::NativeStream(relay::stream(call, response, events))
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
    // A Responses stream always ends with its usage (in its final response).
    request.api == ClientApi::OpenAI && request.stream && !request.client_wants_usage
}

/// Reads usage from a Responses stream's final event (`response.completed`,
/// `.incomplete` or `.failed`); every event passes.
struct ResponsesEvents;

impl relay::Events for ResponsesEvents {
    fn read(&mut self, event: Bytes, usage: &mut Option<Usage>) -> Option<Bytes> {
        // Cheap test first: only the final events carry a usage object.
        if has_usage_object(&event)
            && let Some(found) = sse::data(&event)
                .ok()
                .flatten()
                .and_then(|data| responses::usage_of_event(&data))
        {
            *usage = Some(found);
        }
        Some(event)
    }
}

/// Reads usage from OpenAI's stream chunks.
struct Chunks {
    /// The gateway asked for the usage-only chunk, which is taken out.
    inject_usage: bool,
}

impl relay::Events for Chunks {
    fn read(&mut self, event: Bytes, usage: &mut Option<Usage>) -> Option<Bytes> {
        stream_event(event, self.inject_usage, usage)
    }
}

/// Reads usage from a stream event; returns the event to forward, or `None` to drop
/// the usage-only chunk the gateway asked for on the client's behalf.
fn stream_event(event: Bytes, injected_usage: bool, usage: &mut Option<Usage>) -> Option<Bytes> {
    // Cheap test first: most chunks carry no usage (or `"usage":null`).
    if !has_usage_object(&event) {
        return Some(event);
    }
    let chunk = sse::data(&event)
        .ok()
        .flatten()
        .and_then(|d| serde_json::from_str::<UsageChunk>(&d).ok());
    let Some(chunk) = chunk else {
        return Some(event);
    };
    if let Some(found) = chunk.usage.or(chunk.x_groq.usage) {
        *usage = Some(found);
    }
    let usage_only = chunk.choices.is_none_or(|c| c.is_empty());
    (!(injected_usage && usage_only)).then_some(event)
}

/// Whether `event` has a `"usage"` key whose value is an object (whitespace allowed
/// around the colon): a vectorized search, then a look at what follows each match.
fn has_usage_object(event: &[u8]) -> bool {
    memchr::memmem::find_iter(event, b"\"usage\"").any(|at| {
        let mut rest = event[at + 7..].iter().filter(|b| !b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.next() == Some(&b'{')
    })
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct UsageChunk {
    usage: Option<Usage>,
    #[serde(default, deserialize_with = "crate::ir::tolerant::null_as_default")]
    x_groq: format::ProviderExtension,
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
            (Endpoint::Responses, Operation::Responses),
        ] {
            let url = match config.kind {
                // Azure serves the Responses API on its v1 API, the deployment named
                // in the body's `model` (the upstream name, as for OpenAI).
                ProviderType::AzureOpenAI if operation == Operation::Responses => {
                    format!("{}/openai/v1/responses", config.endpoint)
                }
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
            urls.insert(&model.upstream_name, endpoint, &url)?;
        }
    }
    Ok(urls)
}

/// `body`, a JSON object, with `"stream_options":{"include_usage":true}` as its first
/// field and every other byte as it was. (The client's body is an object with no
/// `stream_options`: `client_api` checked the one, the caller the other.)
fn with_usage_asked(body: &Bytes) -> Bytes {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let open = body.iter().position(|b| *b == b'{').map_or(0, |at| at + 1);
    let mut out = Vec::with_capacity(body.len() + FIELD.len());
    out.extend_from_slice(&body[..open]);
    out.extend_from_slice(FIELD);
    out.extend_from_slice(&body[open..]);
    Bytes::from(out)
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
    fn usage_objects_are_found_however_they_are_spaced() {
        for found in [
            &br#"data: {"usage":{"prompt_tokens":1}}"#[..],
            br#"data: {"usage" : {"prompt_tokens":1}}"#,
            b"data: {\"usage\":\n\t{}}",
            br#"data: {"x":"usage","usage":{}}"#,
        ] {
            assert!(
                has_usage_object(found),
                "{}",
                String::from_utf8_lossy(found)
            );
        }
        for missing in [
            &br#"data: {"usage":null}"#[..],
            br#"data: {"content":"usage"}"#,
            br#"data: {"usage""#,
            b"",
        ] {
            assert!(
                !has_usage_object(missing),
                "{}",
                String::from_utf8_lossy(missing)
            );
        }
    }

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
