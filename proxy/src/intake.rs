//! Reading a client's request off the wire, within limits: the size of its head, the
//! type of its body, and the size and arrival time of its body. Each refusal is a
//! `ProxyError`, answered in the client's API format.

use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Limited};

use crate::error::ProxyError;

/// The limits a request is read within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long the whole body may take to arrive.
    pub body_read_timeout: Duration,
}

/// Refuses a request head (request line and headers, counted as sent) larger than
/// `limit`. hyper's buffer stops heads past twice the limit (`server::serve`); this
/// answers the rest in the client's API format.
pub fn check_head<B>(request: &Request<B>, limit: usize) -> Result<(), ProxyError> {
    // "name: value\r\n" per header, plus the request line.
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = request.method().as_str().len() + target + 12;
    match headers + line > limit {
        true => Err(ProxyError::HeadTooLarge { limit }),
        false => Ok(()),
    }
}

/// The request's head and its whole body, once the body's type is one the gateway
/// reads (see `check_content_type`) and the body arrived within `limits`.
pub async fn read<B>(request: Request<B>, limits: Limits) -> Result<(Parts, Bytes), ProxyError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    check_content_type(request.headers())?;
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, limits).await?;
    Ok((parts, body))
}

/// Request bodies are JSON. Accepted: no Content-Type, `application/json` and
/// `application/*+json` (any parameters), and `application/x-www-form-urlencoded`,
/// which is what `curl -d` sends when no type is given (the body is read as JSON all
/// the same). Anything else (multipart forms, XML, plain text, binary) is refused
/// with 415 rather than half-understood.
fn check_content_type(headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let Ok(value) = value.to_str() else {
        return Err(ProxyError::UnsupportedMediaType("(not text)".to_string()));
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    // Compared as bytes, without case and without copying on every request.
    let bytes = essence.as_bytes();
    let suffixed_json = bytes.len() > "application/+json".len()
        && bytes[..12].eq_ignore_ascii_case(b"application/")
        && bytes[bytes.len() - 5..].eq_ignore_ascii_case(b"+json");
    let accepted = essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        || suffixed_json;
    match accepted {
        true => Ok(()),
        // Echoed back, so only a short printable prefix of what the client sent.
        false => Err(ProxyError::UnsupportedMediaType(
            essence.to_ascii_lowercase().chars().take(64).collect(),
        )),
    }
}

/// Reads the whole body, refusing more than the limit's bytes or a body that takes
/// longer than its time to arrive.
async fn read_body<B>(headers: &HeaderMap, body: B, limits: Limits) -> Result<Bytes, ProxyError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let within = limits.body_read_timeout;
    let collected = tokio::time::timeout(within, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ProxyError::BodyTimeout(within))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(_) => Err(ProxyError::BadRequest(
            "the request body could not be read".to_string(),
        )),
    }
}
