//! The `gemini` provider: Google's Generative Language API, translated through the IR.

use switchboard_api::snapshot::Provider;

use super::exchange::{self, ErrorFormat};
use super::{Call, Endpoint, Reply, UpstreamUrls, decode_stream};
use crate::error::ProxyError;
use crate::formats::gemini;

pub(super) async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    let request = call.request;
    let body = gemini::write_request(super::typed(request)?)?;
    let response = exchange::post(&call, body, ErrorFormat::Google, |builder, key| match key {
        Some(key) => builder.header("x-goog-api-key", key),
        None => builder,
    })
    .await?;
    if request.stream {
        return Ok(Reply::ChatStream(decode_stream(
            response.bytes_stream(),
            gemini::ResponseDecoder::default(),
        )));
    }
    let body = exchange::body(response, call.timeout).await?;
    Ok(Reply::Chat(gemini::parse_response(&body)?))
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
            format!("{base}:generateContent").parse()?,
        );
        urls.insert(
            &model.upstream_name,
            Endpoint::ChatStream,
            format!("{base}:streamGenerateContent?alt=sse").parse()?,
        );
    }
    Ok(urls)
}
