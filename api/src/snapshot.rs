//! The compiled, immutable configuration a proxy serves from.
//!
//! A Snapshot holds everything a proxy needs and nothing it does not: providers with
//! their resolved credentials, routes in match order, consumers by key hash (never the
//! raw key), and quotas with resolved targets. Its `version` is a hash of its content,
//! so every replica that compiles the same objects publishes the same version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::v1alpha1::{
    CacheScope, CacheableRequests, FailurePolicy, HeaderMatchType, MidStreamPolicy, ProviderType,
    QuotaMetric, QuotaScope, QuotaWindow, Strategy,
};

/// The compiled configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// `sha256:` and the hex digest of every other field.
    pub version: String,
    /// Providers by `namespace/name`.
    pub providers: BTreeMap<String, Provider>,
    /// Routes by `namespace/name`.
    pub routes: BTreeMap<String, Route>,
    /// What each group of consumers may reach: consumers that may use the same routes
    /// share one table (`Consumer::route_table` is an index here).
    pub route_tables: Vec<RouteTable>,
    /// Consumers by `namespace/name`.
    pub consumers: BTreeMap<String, Consumer>,
    /// Quotas by `namespace/name`.
    pub quotas: BTreeMap<String, Quota>,
}

/// A provider account with resolved credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Provider {
    pub kind: ProviderType,
    /// Base URL without a trailing slash.
    pub endpoint: String,
    pub api_key: Option<ApiKey>,
    /// Azure's `api-version` query parameter.
    pub azure_api_version: Option<String>,
    /// Anthropic's `anthropic-version` header and `max_tokens` default.
    #[serde(default)]
    pub anthropic: Anthropic,
    /// Models by the name routes use.
    pub models: BTreeMap<String, Model>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub tls: Tls,
    pub echo: Echo,
}

/// A model a provider serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Model {
    /// Name sent upstream (the Azure deployment name for azure-openai).
    pub upstream_name: String,
    pub pricing: Option<Pricing>,
}

/// USD per million tokens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Pricing {
    pub input_per_million: f64,
    pub output_per_million: f64,
    pub cached_input_per_million: f64,
    /// Compiled with its default; `None` only in a snapshot written before the field
    /// existed, read with the same default.
    #[serde(default)]
    pub cache_write_per_million: Option<f64>,
    /// The same for writes kept an hour (Anthropic's `ttl: "1h"`).
    #[serde(default)]
    pub cache_write_1h_per_million: Option<f64>,
}

/// What a cache write costs when its price is not set, times the input price:
/// Anthropic's 5-minute cache write price ($3.75 for $3 of input on Claude Sonnet).
pub const DEFAULT_CACHE_WRITE_FACTOR: f64 = 1.25;

/// The same for a write kept an hour: Anthropic's 1-hour cache write price ($6 for $3
/// of input on Claude Sonnet).
pub const DEFAULT_CACHE_WRITE_1H_FACTOR: f64 = 2.0;

/// The tokens of one request, by how each kind is billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BilledTokens {
    /// Every prompt token, cache reads and writes included.
    pub input: u64,
    /// Of `input`, read from the provider's prompt cache.
    pub cache_reads: u64,
    /// Of `input`, written to the provider's prompt cache.
    pub cache_writes: u64,
    /// Of `cache_writes`, kept an hour.
    pub cache_writes_1h: u64,
    /// Completion tokens, reasoning included: it is billed as output.
    pub output: u64,
}

impl Pricing {
    /// The price in USD of `tokens`: cache reads at the cached rate, cache writes at
    /// the write rate of their lifetime, the rest of the input at the input rate.
    pub fn cost_usd(&self, tokens: BilledTokens) -> f64 {
        // A provider's counts may not add up: the parts never exceed the whole.
        let input = tokens.input;
        let reads = tokens.cache_reads.min(input);
        let writes = tokens.cache_writes.min(input - reads);
        let writes_1h = tokens.cache_writes_1h.min(writes);
        let per_token = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1e6;
        per_token(input - reads - writes, self.input_per_million)
            + per_token(reads, self.cached_input_per_million)
            + per_token(writes - writes_1h, self.cache_write_per_million())
            + per_token(writes_1h, self.cache_write_1h_per_million())
            + per_token(tokens.output, self.output_per_million)
    }

    /// USD per million cache-write tokens, the default when unset.
    pub fn cache_write_per_million(&self) -> f64 {
        self.cache_write_per_million
            .unwrap_or(self.input_per_million * DEFAULT_CACHE_WRITE_FACTOR)
    }

    /// USD per million tokens of cache writes kept an hour, the default when unset.
    pub fn cache_write_1h_per_million(&self) -> f64 {
        self.cache_write_1h_per_million
            .unwrap_or(self.input_per_million * DEFAULT_CACHE_WRITE_1H_FACTOR)
    }
}

/// TLS settings towards a provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca_bundle_pem: Option<String>,
    pub insecure_skip_verify: bool,
}

/// Anthropic provider settings, defaults applied.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Anthropic {
    pub version: String,
    pub default_max_tokens: u32,
}

/// Echo provider behaviour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Echo {
    pub latency_ms: u64,
    pub chunk_interval_ms: u64,
}

/// A route: its match and its backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Route {
    pub models: BTreeSet<String>,
    pub headers: Vec<HeaderMatch>,
    /// Valid backends, in the order the AIRoute lists them.
    pub backends: Vec<Backend>,
    /// Overrides the provider's request timeout (per attempt).
    pub request_timeout_ms: Option<u64>,
    /// Limit on the whole request, across attempts.
    #[serde(default)]
    pub total_timeout_ms: Option<u64>,
    /// Limit, per attempt, on the time to a stream's first event.
    #[serde(default)]
    pub first_token_timeout_ms: Option<u64>,
    /// Overrides the proxy's stream idle timeout (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub circuit: Circuit,
    /// Response caching; `None` when off.
    #[serde(default)]
    pub cache: Option<CachePolicy>,
}

/// A route's response caching, defaults applied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl_ms: u64,
    pub max_entry_bytes: u64,
    pub requests: CacheableRequests,
    pub scope: CacheScope,
    /// 0: no coalescing.
    pub coalesce_wait_ms: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl_ms: 3_600_000,
            max_entry_bytes: 1 << 20,
            requests: CacheableRequests::All,
            scope: CacheScope::PerConsumer,
            coalesce_wait_ms: 30_000,
        }
    }
}

/// Passive circuit breaking, defaults applied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Circuit {
    /// Consecutive failures that eject a backend; 0: never.
    pub consecutive_failures: u32,
    /// Failure percentage over `window_ms` that ejects a backend; 0: never.
    #[serde(default)]
    pub error_rate_percent: u32,
    #[serde(default)]
    pub window_ms: u64,
    pub ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl Default for Circuit {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate_percent: 0,
            window_ms: 30_000,
            ejection_ms: 10_000,
            max_ejection_ms: 300_000,
        }
    }
}

/// Retry and fallback policy, defaults applied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Retries may add at most this percentage of the route's requests.
    pub budget_percent: u32,
    /// Whether a success that cannot be read may move on to the next backend.
    #[serde(default)]
    pub fallback_on_unreadable: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_ms: 100,
            max_backoff_ms: 2_000,
            budget_percent: 20,
            fallback_on_unreadable: false,
        }
    }
}

/// A header condition. For `RegularExpression`, `value` is a valid, anchored pattern.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower-cased header name.
    pub name: String,
    pub value: String,
    pub kind: HeaderMatchType,
}

/// A provider model that serves a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/name` of the provider, a key of `Snapshot::providers`.
    pub provider: String,
    /// Model name on that provider, a key of `Provider::models`.
    pub model: String,
    pub weight: u32,
    pub priority: u32,
}

/// A consumer: hashes of its keys and what it may use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// `hash_key()` of each valid gateway key.
    pub key_hashes: BTreeSet<String>,
    /// Index in `Snapshot::route_tables` of the routes it may use.
    pub route_table: usize,
    pub labels: BTreeMap<String, String>,
}

/// The routes some consumers may use: every access rule (namespaces, the routes'
/// grants, the consumers' allowlists) already applied by compile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteTable {
    /// For each model name these consumers may send, the routes (`namespace/name`)
    /// that serve it, in the order they are tried: the consumers' own namespace first,
    /// then the platform namespace, then routes granted by other namespaces; within
    /// each, more header matches first, then older. The first whose matches hold wins.
    pub models: BTreeMap<String, Vec<String>>,
}

/// A quota with its targets resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Quota {
    /// Consumers (`namespace/name`) it applies to; `None` means any.
    pub consumers: Option<BTreeSet<String>>,
    /// Routes (`namespace/name`) it applies to; `None` means any.
    pub routes: Option<BTreeSet<String>>,
    /// Model names it applies to; `None` means any.
    pub models: Option<BTreeSet<String>>,
    pub limits: Vec<QuotaLimit>,
    pub failure_policy: FailurePolicy,
    pub scope: QuotaScope,
    /// Output tokens reserved for a request without `max_tokens`.
    pub default_output_tokens: u32,
    pub mid_stream: MidStreamPolicy,
    /// The route (`namespace/name`) requests over a limit go to instead of a 429.
    pub fallback_route: Option<String>,
}

/// At most `max` of `metric` per `window`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct QuotaLimit {
    pub metric: QuotaMetric,
    pub max: f64,
    pub window: QuotaWindow,
}

/// A provider API key. Its `Debug` is redacted; it serializes in full because the
/// Snapshot carries it to proxies (over TLS), and is read only where a header is written.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct ApiKey(String);

// === impl Snapshot ===

impl Snapshot {
    /// Sets `version` to the hash of every other field.
    pub fn seal(mut self) -> Self {
        self.version = String::new();
        // Serializing plain data (maps with string keys, numbers, strings) cannot fail.
        let bytes = serde_json::to_vec(&self).unwrap_or_default();
        self.version = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        self
    }

    /// True when `version` matches the content: the Snapshot was not altered.
    pub fn is_sealed(&self) -> bool {
        self.clone().seal().version == self.version
    }

    /// What a proxy checks before serving a Snapshot it received or read from disk: the
    /// version matches the content, and every reference inside it resolves.
    pub fn validate(&self) -> Result<(), String> {
        if !self.is_sealed() {
            return Err(format!(
                "version {} does not match the content",
                self.version
            ));
        }
        for (id, route) in &self.routes {
            if route.backends.is_empty() {
                return Err(format!("route {id} has no backends"));
            }
            for backend in &route.backends {
                let provider = self.providers.get(&backend.provider).ok_or_else(|| {
                    format!("route {id} names unknown provider {}", backend.provider)
                })?;
                if !provider.models.contains_key(&backend.model) {
                    return Err(format!(
                        "route {id} names unknown model {} of provider {}",
                        backend.model, backend.provider
                    ));
                }
            }
        }
        for table in &self.route_tables {
            for (model, routes) in &table.models {
                if let Some(route) = routes.iter().find(|r| !self.routes.contains_key(*r)) {
                    return Err(format!("model {model} names unknown route {route}"));
                }
            }
        }
        for (id, consumer) in &self.consumers {
            if consumer.route_table >= self.route_tables.len() {
                return Err(format!(
                    "consumer {id} names a route table that does not exist"
                ));
            }
        }
        Ok(())
    }
}

// === impl ApiKey ===

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself. Call only where the upstream auth header is written.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The hash under which a gateway key is stored: `sha256:` and the hex digest.
/// Proxies hash the presented key the same way and look it up.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::{BilledTokens, Pricing};

    /// `input` tokens of which `reads` cached and `writes` written (none kept an hour), and `output`.
    fn tokens(input: u64, reads: u64, writes: u64, output: u64) -> BilledTokens {
        BilledTokens {
            input,
            cache_reads: reads,
            cache_writes: writes,
            cache_writes_1h: 0,
            output,
        }
    }

    #[test]
    fn cost_prices_cached_input_at_its_own_rate() {
        let pricing = Pricing {
            input_per_million: 2.5,
            output_per_million: 10.0,
            cached_input_per_million: 1.25,
            cache_write_per_million: None,
            cache_write_1h_per_million: None,
        };
        // 1,000 input of which 400 cached, 500 output:
        // 600 * 2.5 + 400 * 1.25 + 500 * 10 = 1,500 + 500 + 5,000 per million.
        let cost = pricing.cost_usd(tokens(1_000, 400, 0, 500));
        assert!((cost - 0.007).abs() < 1e-12, "{cost}");
        // More cached than input (a provider's rounding) never goes negative.
        assert!((pricing.cost_usd(tokens(10, 20, 0, 0)) - 10.0 * 1.25 / 1e6).abs() < 1e-15);
        assert!(
            (pricing.cost_usd(tokens(10, 4, 20, 0)) - (4.0 * 1.25 + 6.0 * 3.125) / 1e6).abs()
                < 1e-15
        );
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Claude Sonnet 4 on https://www.anthropic.com/pricing (and
    /// docs.anthropic.com/en/docs/about-claude/pricing): $3/MTok input, $3.75 5-minute
    /// cache write, $0.30 cache hit, $15 output.
    #[test]
    fn cost_of_an_anthropic_answer_with_cache_reads_and_writes() {
        let sonnet = Pricing {
            input_per_million: 3.0,
            output_per_million: 15.0,
            cached_input_per_million: 0.30,
            cache_write_per_million: Some(3.75),
            cache_write_1h_per_million: Some(6.0),
        };
        // usage: input_tokens 100, cache_creation_input_tokens 2,000,
        // cache_read_input_tokens 10,000, output_tokens 500; the IR's input is all
        // 12,100. 100 * 3 + 2,000 * 3.75 + 10,000 * 0.30 + 500 * 15
        // = 300 + 7,500 + 3,000 + 7,500 = 18,300 per million = $0.0183.
        assert!(close(
            sonnet.cost_usd(tokens(12_100, 10_000, 2_000, 500)),
            0.0183
        ));
        // Without a write price, writes cost 1.25 x input: 3.75, the same.
        let default_write = Pricing {
            cache_write_per_million: None,
            ..sonnet
        };
        assert_eq!(default_write.cache_write_per_million(), 3.75);
        assert!(close(
            default_write.cost_usd(tokens(12_100, 10_000, 2_000, 500)),
            0.0183
        ));
    }

    /// The same Sonnet prices, with 1-hour cache writes at $6/MTok (2x input).
    #[test]
    fn cost_of_an_anthropic_answer_with_one_hour_cache_writes() {
        let sonnet = Pricing {
            input_per_million: 3.0,
            output_per_million: 15.0,
            cached_input_per_million: 0.30,
            cache_write_per_million: None,
            cache_write_1h_per_million: None,
        };
        // usage: input_tokens 100, cache_creation_input_tokens 2,000 of which
        // cache_creation.ephemeral_1h_input_tokens 1,500, cache_read_input_tokens 0,
        // output_tokens 500: 100 * 3 + 500 * 3.75 + 1,500 * 6 + 500 * 15
        // = 300 + 1,875 + 9,000 + 7,500 = 18,675 per million = $0.018675.
        let used = BilledTokens {
            cache_writes_1h: 1_500,
            ..tokens(2_100, 0, 2_000, 500)
        };
        assert!(close(sonnet.cost_usd(used), 0.018_675));
        // More 1-hour writes than writes (a provider's rounding) are capped at the writes.
        let over = BilledTokens {
            cache_writes_1h: 9_000,
            ..tokens(2_100, 0, 2_000, 0)
        };
        assert!(close(
            sonnet.cost_usd(over),
            (100.0 * 3.0 + 2_000.0 * 6.0) / 1e6
        ));
    }

    /// gpt-4o on https://openai.com/api/pricing/: $2.50/MTok input, $1.25 cached
    /// input, $10 output. o-series reasoning tokens are billed as output and counted
    /// in `completion_tokens`.
    #[test]
    fn cost_of_an_openai_answer_with_cached_and_reasoning_tokens() {
        let gpt_4o = Pricing {
            input_per_million: 2.5,
            output_per_million: 10.0,
            cached_input_per_million: 1.25,
            cache_write_per_million: None,
            cache_write_1h_per_million: None,
        };
        // prompt_tokens 2,000 of which cached_tokens 1,536; completion_tokens 300 of
        // which reasoning_tokens 200: 464 * 2.50 + 1,536 * 1.25 + 300 * 10
        // = 1,160 + 1,920 + 3,000 = 6,080 per million = $0.00608.
        assert!(close(
            gpt_4o.cost_usd(tokens(2_000, 1_536, 0, 300)),
            0.00608
        ));
    }

    /// Gemini 2.5 Pro on https://ai.google.dev/gemini-api/docs/pricing (prompts up to
    /// 200k tokens): $1.25/MTok input, $10 output "including thinking tokens", $0.31
    /// context caching (reads).
    #[test]
    fn cost_of_a_gemini_answer_with_thoughts() {
        let pro = Pricing {
            input_per_million: 1.25,
            output_per_million: 10.0,
            cached_input_per_million: 0.31,
            cache_write_per_million: None,
            cache_write_1h_per_million: None,
        };
        // promptTokenCount 10,000 of which cachedContentTokenCount 8,000;
        // candidatesTokenCount 1,000 and thoughtsTokenCount 3,000 (output 4,000):
        // 2,000 * 1.25 + 8,000 * 0.31 + 4,000 * 10 = 2,500 + 2,480 + 40,000
        // = 44,980 per million = $0.04498.
        assert!(close(
            pro.cost_usd(tokens(10_000, 8_000, 0, 4_000)),
            0.04498
        ));
    }
}
