//! The `anthropic` provider: Anthropic's Messages API, translated through the IR.

use switchboard_api::snapshot::Provider;

use super::exchange::{self, ErrorFormat};
use super::{Call, Endpoint, Reply, UpstreamUrls, decode_stream};
use crate::error::ProxyError;
use crate::formats::anthropic;

pub(super) async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    let request = call.request;
    let chat = super::typed(request)?;
    let provider = &call.provider.config;
    let body = anthropic::write_request(
        chat,
        call.upstream_model,
        request.stream,
        provider.anthropic.default_max_tokens,
    )?;
    let response = exchange::post(&call, body, ErrorFormat::Anthropic, |builder, key| {
        let builder = builder.header("anthropic-version", &provider.anthropic.version);
        match key {
            Some(key) => builder.header("x-api-key", key),
            None => builder,
        }
    })
    .await?;
    if request.stream {
        return Ok(Reply::ChatStream(decode_stream(
            response.bytes_stream(),
            anthropic::EventDecoder::default(),
        )));
    }
    let body = exchange::body(response, call.timeout).await?;
    Ok(Reply::Chat(anthropic::parse_response(&body)?))
}

/// `{endpoint}/messages` for every model: the model is named in the body.
pub(super) fn urls(config: &Provider) -> Result<UpstreamUrls, url::ParseError> {
    let mut urls = UpstreamUrls::default();
    let messages: url::Url = format!("{}/messages", config.endpoint).parse()?;
    for model in config.models.values() {
        urls.insert(&model.upstream_name, Endpoint::Chat, messages.clone());
        urls.insert(&model.upstream_name, Endpoint::ChatStream, messages.clone());
    }
    Ok(urls)
}
