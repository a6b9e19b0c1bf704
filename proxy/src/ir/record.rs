//! What is known of a request when it ends: who asked, for what, where it went, who
//! answered, what it used and cost, and how it ended. Plain data, assembled by the
//! pipeline from what each step returned and completed by the request's end; the
//! access line, the metrics and the request's span are each written from it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use switchboard_api::snapshot::Pricing;

use super::request::{Operation, Request};
use super::stream::StreamOutcome;
use super::usage::Usage;

/// A finished (or finishing) request.
#[derive(Debug, Default)]
pub struct RequestRecord {
    pub request_id: String,
    pub method: http::Method,
    pub uri: http::Uri,

    // Who asked: the gateway key's AIConsumer.
    pub consumer: Option<String>,
    /// The consumer's labels (its AIConsumer's), for grouping in log queries.
    pub consumer_labels: Option<BTreeMap<String, String>>,

    // What was asked: the request as read.
    pub model: Option<String>,
    pub operation: Option<Operation>,
    pub stream: bool,
    /// With body logging: the start of the request body.
    pub request_body: Option<LoggedBody>,

    // Where it went.
    pub route: Option<String>,
    /// The quota whose limit sent the request to its fallback route.
    pub quota_fallback: Option<String>,
    /// On a route with a cache: what the cache did.
    pub cache: Option<CacheResult>,
    /// On a cache hit: what the stored answer had cost (what the hit saved).
    pub cache_saved_usd: Option<f64>,

    // Who answered.
    pub tried: Tried,

    // How it ended.
    pub status: u16,
    pub error: Option<&'static str>,
    /// Time to response headers; for a stream, that is its first event.
    pub headers_after: Option<Duration>,
    /// Time to the end of the response (a stream's last event).
    pub latency: Duration,
    pub usage: Option<Usage>,
    pub stream_outcome: Option<StreamOutcome>,
    /// What it cost; `None` when no tokens are known or the model has no prices.
    pub cost_usd: Option<f64>,
    /// With body logging: the start of the response body as sent.
    pub response_body: Option<LoggedBody>,
}

/// The upstream attempts of a request: how many were made, and the backend of the
/// last one (the one that answered, if any did).
#[derive(Debug, Clone, Default)]
pub struct Tried {
    pub attempts: u32,
    /// The provider (`namespace/name`).
    pub provider: Option<String>,
    /// The model name sent to it.
    pub upstream_model: Option<String>,
    /// Its model's prices; `None`: unpriced.
    pub pricing: Option<Pricing>,
}

/// What the cache did for a request, as the response header and the log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    /// Looked up and not found, or `refresh`.
    Miss,
    /// Not looked up: the client asked so, or the request is not cacheable.
    Bypass,
}

/// The first bytes of a body, as logged.
#[derive(Debug, Clone)]
pub struct LoggedBody {
    pub bytes: Bytes,
    /// Whether the body went on past `bytes`.
    pub truncated: bool,
}

// === impl RequestRecord ===

impl RequestRecord {
    pub fn new(request_id: String, method: http::Method, uri: http::Uri) -> Self {
        Self {
            request_id,
            method,
            uri,
            ..Self::default()
        }
    }

    /// Who asked: the AIConsumer's id and labels.
    pub fn called_by(&mut self, consumer: &str, labels: &BTreeMap<String, String>) {
        self.consumer = Some(consumer.to_string());
        self.consumer_labels = Some(labels.clone()).filter(|l| !l.is_empty());
    }

    /// What the client asked for.
    pub fn asked(&mut self, request: &Request) {
        self.model = Some(request.model.clone());
        self.operation = Some(request.operation);
        self.stream = request.stream;
    }

    /// Time to the first event of a stream that was answered.
    pub fn first_token_after(&self) -> Option<Duration> {
        match self.stream && self.status == 200 {
            true => self.headers_after,
            false => None,
        }
    }

    /// What the usage cost at the answering model's prices: `None` when no tokens are
    /// known or the model has no prices (see `unpriced`).
    pub fn price(&self) -> Option<f64> {
        let usage = self.usage?;
        let pricing = self.tried.pricing?;
        Some(usage.cost_usd(&pricing))
    }

    /// Tokens were used on a model without prices: its cost is unknown, not zero.
    pub fn unpriced(&self) -> bool {
        self.usage.is_some() && self.tried.pricing.is_none()
    }

    /// A stream that was answered but ended without the provider's usage (the client
    /// left, or the provider broke off): what it used is unknown.
    pub fn usage_unknown(&self) -> bool {
        self.stream && self.status == 200 && self.usage.is_none()
    }
}

// === impl Tried ===

impl Tried {
    /// Another attempt begins, on this backend.
    pub fn attempt(&mut self, provider: &str, upstream_model: &str, pricing: Option<Pricing>) {
        self.attempts += 1;
        self.provider = Some(provider.to_string());
        self.upstream_model = Some(upstream_model.to_string());
        self.pricing = pricing;
    }
}

// === impl CacheResult ===

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }
}

// === impl LoggedBody ===

impl LoggedBody {
    /// A copy of the first `limit` bytes of `body` (a copy, so that a large body is
    /// not kept alive for the length of a stream by its logged start).
    pub fn capture(body: &[u8], limit: usize) -> Self {
        Self {
            bytes: Bytes::copy_from_slice(&body[..body.len().min(limit)]),
            truncated: body.len() > limit,
        }
    }

    /// The bytes as text; a multi-byte character cut at the limit shows as U+FFFD.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}
