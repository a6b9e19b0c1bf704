//! The `gemini` provider: Google's Generative Language API, translated through the IR.

use bytes::Bytes;
use switchboard_api::snapshot::Provider;

use super::exchange::{self, ErrorBody};
use super::{Adapter, Call, Endpoint, UpstreamUrls, decode_stream};
use crate::error::ProxyError;
use crate::formats::gemini as format;
use crate::ir::reply::Reply;

/// Google's Generative Language API.
pub(super) struct Gemini;

impl Adapter for Gemini {
    fn request(call: &Call<'_>) -> Result<Bytes, ProxyError> {
        format::write_request(super::typed(call.request)?)
    }

    fn authorize(
        builder: reqwest::RequestBuilder,
        _: &Call<'_>,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match key {
            Some(key) => builder.header("x-goog-api-key", key),
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
        ErrorBody {
            message: format::parse_error(body),
            // No client speaks Google's format.
            native: None,
            bad_key: format::is_bad_key(body),
        }
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
