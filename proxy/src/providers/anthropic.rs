//! The `anthropic` provider: Anthropic's Messages API, translated through the IR.

use http::header;
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
    let url = call
        .provider
        .urls
        .get(call.upstream_model, Endpoint::of(request))
        .cloned()
        .ok_or_else(|| ProxyError::UnknownModel(request.model.clone()))?;
    let mut builder = call
        .provider
        .client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", &provider.anthropic.version)
        .header("x-request-id", call.request_id)
        .body(body);
    if let Some(key) = &provider.api_key {
        builder = builder.header("x-api-key", key.expose());
    }
    let response = exchange::send(builder, request.stream, call.timeout).await?;
    let response =
        exchange::check_status(response, ErrorFormat::Anthropic, provider.api_key.as_ref()).await?;
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
