//! `ProxyError`: everything that can go wrong with a request, and the single place
//! where an error becomes a response in the client API's format.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use crate::ir::ClientApi;

/// A request failure. Messages never contain keys or upstream internals.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "missing API key: send it as 'Authorization: Bearer <key>', 'x-api-key: <key>' or 'x-goog-api-key: <key>'"
    )]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("the model '{0}' does not exist or you do not have access to it")]
    UnknownModel(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error(
        "the request head (request line and headers) is larger than the limit of {limit} bytes"
    )]
    HeadTooLarge { limit: usize },
    #[error("unsupported Content-Type '{0}': send the request body as application/json")]
    UnsupportedMediaType(String),
    #[error("unknown path {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the gateway is not ready to serve yet")]
    NotReady,
    /// The proxy is at its limit of connections or of requests in flight
    /// (`--max-connections`, `--max-requests-in-flight`).
    #[error("the gateway is at its limit of {0}; retry shortly")]
    Overloaded(&'static str),
    /// A quota's limit is reached until its window ends (`retry_after`, seconds).
    #[error("quota {quota} is exhausted ({limit}); retry after {retry_after:?} seconds")]
    QuotaExceeded {
        quota: String,
        limit: String,
        retry_after: http::HeaderValue,
    },
    /// A quota that fails closed cannot reach the shared counter store.
    #[error(
        "quota {quota} cannot be checked right now (its counter store is unavailable and it fails closed); retry shortly"
    )]
    QuotaUnavailable { quota: String },
    #[error("upstream provider could not be reached")]
    UpstreamConnect,
    #[error("upstream provider did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error(
        "upstream provider rejected the gateway's credentials (status {0}); check the AIProvider's Secret"
    )]
    UpstreamAuth(u16),
    #[error("upstream provider failed with status {status}{}", detail(.message))]
    UpstreamStatus {
        status: u16,
        message: Option<String>,
    },
    /// The provider is overloaded or unavailable (503, Anthropic's 529).
    #[error("upstream provider is overloaded{}", detail(.message))]
    UpstreamOverloaded {
        retry_after: Option<http::HeaderValue>,
        message: Option<String>,
    },
    #[error("upstream provider sent an invalid response")]
    UpstreamProtocol,
    /// The provider answered with a success whose body cannot be read: what was wrong
    /// and where (a category and position, never the body's content). It was answered,
    /// and so paid for: not tried again on the same backend (see `pipeline::attempts`).
    #[error("upstream provider sent a response that cannot be read ({0})")]
    UpstreamUnreadable(String),
    /// A whole response's body went over `--max-upstream-body-bytes`.
    #[error("upstream provider sent a response larger than the limit of {limit} bytes")]
    UpstreamTooLarge { limit: usize },
    /// The provider refused the request with a client error (4xx other than 401/403).
    /// Its error body, when it is in the client's API format, is passed through as is.
    #[error("upstream provider refused the request (status {status}){}", detail(.message))]
    UpstreamRefused {
        status: StatusCode,
        retry_after: Option<http::HeaderValue>,
        message: Option<String>,
        native: Option<NativeError>,
    },
}

/// `Retry-After` when the proxy itself is full: a second is enough for a request to
/// end, and clients back off from there.
static RETRY_SHORTLY: http::HeaderValue = http::HeaderValue::from_static("1");

/// A provider's own error body, and the client API whose format it is in.
#[derive(Debug, Clone)]
pub struct NativeError {
    pub api: ClientApi,
    pub body: Bytes,
}

/// ": message" when the provider gave one.
fn detail(message: &Option<String>) -> String {
    match message {
        Some(message) => format!(": {message}"),
        None => String::new(),
    }
}

/// OpenAI's error `type` and `code` for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    pub status: StatusCode,
    pub type_: &'static str,
    pub code: &'static str,
}

// === impl ProxyError ===

impl ProxyError {
    /// Status, OpenAI error type and code. Exhaustive on purpose: a new variant must say
    /// how it looks to clients.
    pub fn class(&self) -> ErrorClass {
        use ProxyError::*;
        let (status, type_, code) = match self {
            MissingKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_api_key",
            ),
            InvalidKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
            ),
            UnknownModel(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
            ),
            BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
            ),
            HeadTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                "request_headers_too_large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
            ),
            NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
            ),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
            ),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "not_ready"),
            Overloaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "gateway_overloaded",
            ),
            QuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "quota_exceeded",
            ),
            QuotaUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "quota_unavailable",
            ),
            UpstreamConnect => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unreachable",
            ),
            UpstreamTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
            ),
            UpstreamAuth(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_auth_failed",
            ),
            UpstreamStatus { .. } => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_error"),
            UpstreamOverloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "upstream_overloaded",
            ),
            UpstreamProtocol => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_bad_response",
            ),
            UpstreamUnreadable(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unreadable_response",
            ),
            UpstreamTooLarge { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_response_too_large",
            ),
            UpstreamRefused { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                (*status, "rate_limit_error", "rate_limit_exceeded")
            }
            UpstreamRefused { status, .. } => {
                (*status, "invalid_request_error", "upstream_refused")
            }
        };
        ErrorClass {
            status,
            type_,
            code,
        }
    }

    /// The `Retry-After` the provider sent, to pass on to the client.
    pub fn retry_after(&self) -> Option<&http::HeaderValue> {
        match self {
            ProxyError::UpstreamRefused { retry_after, .. }
            | ProxyError::UpstreamOverloaded { retry_after, .. } => retry_after.as_ref(),
            ProxyError::QuotaExceeded { retry_after, .. } => Some(retry_after),
            ProxyError::Overloaded(_) => Some(&RETRY_SHORTLY),
            _ => None,
        }
    }

    /// Whether another attempt (on another backend, or later on the same one) may
    /// succeed: the provider was unreachable, slow, overloaded, rate limited or broken.
    /// A request the provider refused as such (400, 401, 403, 404...) fails the same
    /// everywhere, and errors of the gateway's own are about the client's request.
    /// An unreadable success is retryable on other backends only
    /// (`retries_same_backend`).
    pub fn is_retryable(&self) -> bool {
        use ProxyError::*;
        match self {
            UpstreamConnect
            | UpstreamTimeout(_)
            | UpstreamStatus { .. }
            | UpstreamOverloaded { .. }
            | UpstreamProtocol
            | UpstreamUnreadable(_)
            | UpstreamTooLarge { .. } => true,
            UpstreamRefused { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS,
            MissingKey
            | InvalidKey
            | UnknownModel(_)
            | BadRequest(_)
            | BodyTooLarge { .. }
            | BodyTimeout(_)
            | HeadTooLarge { .. }
            | UnsupportedMediaType(_)
            | NotFound(_)
            | MethodNotAllowed { .. }
            | NotReady
            | Overloaded(_)
            | QuotaExceeded { .. }
            | QuotaUnavailable { .. }
            | UpstreamAuth(_) => false,
        }
    }

    /// Whether a retryable failure may be tried again on the backend that failed. Not
    /// when the backend answered with a success we could not read: it did the work and
    /// billed it, and would most likely answer the same way again.
    pub fn retries_same_backend(&self) -> bool {
        self.is_retryable() && !matches!(self, ProxyError::UpstreamUnreadable(_))
    }

    /// `Retry-After` in seconds, when the provider sent one (HTTP dates are ignored).
    pub fn retry_after_delay(&self) -> Option<Duration> {
        let seconds = self
            .retry_after()?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(Duration::from_secs(seconds))
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.class().code
    }
}
