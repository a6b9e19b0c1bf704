//! The response body type every handler returns (a whole buffer or a stream), and the
//! few response shapes every part writes: JSON, plain text, an event stream.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// Errors a streaming body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with `status` (any client API's: OpenAI's and Anthropic's answers
/// and errors are all JSON).
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, full(body), "application/json")
}

/// A plain-text response with `status`.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, full(body), "text/plain; charset=utf-8")
}

/// A server-sent event stream response.
pub fn event_stream(body: Body) -> Response<Body> {
    let mut response = with_type(StatusCode::OK, body, "text/event-stream");
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering reverse proxies in front of us to pass events on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
