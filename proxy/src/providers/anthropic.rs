//! The `anthropic` provider: Anthropic's Messages API, translated through the IR.

use bytes::Bytes;
use switchboard_api::snapshot::Provider;

use super::exchange::{self, ErrorBody};
use super::{Adapter, Call, Endpoint, UpstreamUrls, decode_stream};
use crate::error::ProxyError;
use crate::formats::anthropic as format;
use crate::ir::ClientApi;
use crate::ir::reply::Reply;

/// Anthropic's Messages API.
pub(super) struct Anthropic;

impl Adapter for Anthropic {
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError> {
        let request = call.request;
        format::write_request(
            super::typed(request)?,
            call.upstream_model,
            request.stream,
            call.upstream.config.anthropic.default_max_tokens,
        )
    }

    fn authorize(
        builder: reqwest::RequestBuilder,
        config: &Provider,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = builder.header("anthropic-version", &config.anthropic.version);
        match key {
            Some(key) => builder.header("x-api-key", key),
            None => builder,
        }
    }

    fn response(_: &Call<'_>, body: Bytes) -> Result<Reply, ProxyError> {
        Ok(Reply::Chat(format::parse_response(&body)?))
    }

    fn stream(call: &Call<'_>, response: reqwest::Response) -> Reply {
        Reply::ChatStream(decode_stream(
            response.bytes_stream(),
            format::StreamDecoder::default(),
            call.limits,
            exchange::key(call.upstream),
        ))
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
