//! The config service: proxies hold a long poll here and receive each new Snapshot as
//! soon as it is published.
//!
//! `GET /v1/snapshot?proxy=ID&version=V&wait=S` with `Authorization: Bearer TOKEN`:
//! - `200` with the Snapshot (JSON) when the served version differs from `V`;
//! - `304` when nothing changed within `S` seconds (at most the operator's poll
//!   timeout); the proxy asks again at once. The proxy picks `S` so that its own
//!   request timeout notices a silently dead connection.
//!
//! Every request reports the version its proxy serves (`V`), which is how the operator
//! knows when an object is `Programmed` everywhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::http::{self as http_util, Body};
use crate::metrics::Metrics;
use crate::proxies::ProxyTable;
use crate::publish::Publisher;
use crate::token::TokenFile;

/// The path proxies poll.
pub const SNAPSHOT_PATH: &str = "/v1/snapshot";
/// Response header naming the version in the body.
pub const VERSION_HEADER: &str = "x-switchboard-config-version";

/// Serves Snapshots to proxies.
#[derive(Debug)]
pub struct ConfigService {
    pub publisher: Publisher,
    pub proxies: Arc<ProxyTable>,
    /// The token proxies must present.
    pub token: Arc<TokenFile>,
    pub poll_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

// === impl ConfigService ===

impl ConfigService {
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let response = self.respond(&request, peer).await;
        self.metrics
            .config_requests
            .with([response.status().as_str()])
            .inc();
        response
    }

    async fn respond(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if request.uri().path() != SNAPSHOT_PATH {
            return http_util::error(
                StatusCode::NOT_FOUND,
                "not found; proxies poll /v1/snapshot",
            );
        }
        if request.method() != Method::GET {
            return http_util::error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        }
        if let Some(refusal) = self.refusal(request) {
            return refusal;
        }
        let query = Query::parse(request.uri().query().unwrap_or_default());
        let Some(proxy) = query.proxy.filter(|id| valid_id(id)) else {
            return http_util::error(
                StatusCode::BAD_REQUEST,
                "query parameter proxy: required, 1-253 characters of a-z, A-Z, 0-9, '.', '-', '_'",
            );
        };
        let version = query.version.unwrap_or_default();
        if version.len() > 100 {
            return http_util::error(StatusCode::BAD_REQUEST, "query parameter version: too long");
        }
        let _poll = self.proxies.poll(&proxy, &version, peer);

        let mut published = self.publisher.subscribe();
        let wait = query.wait.map_or(self.poll_timeout, |s| {
            Duration::from_secs(s).min(self.poll_timeout)
        });
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let current = published.borrow_and_update().clone();
            if let Some(current) = current
                && current.version != version
            {
                let mut response =
                    http_util::respond(StatusCode::OK, "application/json", current.body.clone());
                if let Ok(value) = HeaderValue::from_str(&current.version) {
                    response.headers_mut().insert(VERSION_HEADER, value);
                }
                return response;
            }
            tokio::select! {
                changed = published.changed() => if changed.is_err() {
                    return http_util::error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                },
                () = &mut deadline => {
                    return http_util::respond(StatusCode::NOT_MODIFIED, "application/json", "");
                }
            }
        }
    }

    /// Checks the bearer token against the token file's, in constant time; the
    /// response refusing the request when it does not match.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        let Some(expected) = self.token.current() else {
            return Some(http_util::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the operator has no token configured",
            ));
        };
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim();
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return None;
        }
        let mut response =
            http_util::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

/// The query of a poll.
#[derive(Debug, Default)]
struct Query {
    proxy: Option<String>,
    version: Option<String>,
    /// Seconds to hold the poll.
    wait: Option<u64>,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut parsed = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "proxy" => parsed.proxy = Some(value.into_owned()),
                "version" => parsed.version = Some(value.into_owned()),
                "wait" => parsed.wait = value.parse().ok(),
                _ => {}
            }
        }
        parsed
    }
}

/// Proxy ids become metric labels and log fields: keep them short and plain.
fn valid_id(id: &str) -> bool {
    (1..=253).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
