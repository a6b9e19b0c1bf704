//! `AIRoute`: which model names clients may ask for, and which provider models serve them.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{DURATION_PATTERN, ObjectStatus};

/// Maps model names that clients send to backends (provider + model).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "AIRoute",
    plural = "airoutes",
    shortname = "air",
    category = "switchboard",
    namespaced,
    status = "ObjectStatus",
    doc = "Routes requests for one or more model names to weighted, prioritised provider backends.",
    printcolumn(name = "Models", type_ = "string", json_path = ".spec.models"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Refs",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ResolvedRefs\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.backends.exists(b, b.weight > 0)")
    .message("at least one backend needs a weight above 0"))]
#[serde(rename_all = "camelCase")]
pub struct AIRouteSpec {
    /// Model names this route answers, as clients send them in the request's `model`
    /// field. Aliases such as `fast` or `smart` are just more names.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub models: Vec<String>,

    /// Request headers that must all match for this route to apply. A route with header
    /// matches takes precedence over one without for the same model name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,

    /// Where matching requests go. Requests go to the lowest `priority` tier, spread by
    /// `weight`; higher tiers are fallbacks.
    #[schemars(length(min = 1, max = 32))]
    pub backends: Vec<RouteBackend>,

    /// Timeouts for requests on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,

    /// Retries and fallback when a backend fails. Defaults apply when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,

    /// How a backend is chosen within a priority tier. Default `Weighted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,

    /// Passive circuit breaking: a backend that keeps failing is ejected for a while.
    /// Defaults apply when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,

    /// Exact-match response caching. Off when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCache>,

    /// Which AIConsumers may use this route. Omitted: the consumers of the route's own
    /// namespace. Consumers of other namespaces get the route only when it allows them
    /// here and it is in the platform namespace, or they name it in `allowedRoutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_consumers: Option<AllowedConsumers>,
}

/// The consumers a route is offered to: the route owner's grant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.namespaces) || self.namespaces.from != 'Selector' || has(self.namespaces.selector)")
    .message("namespaces.selector is required when namespaces.from is Selector"))]
#[serde(rename_all = "camelCase")]
pub struct AllowedConsumers {
    /// Namespaces whose consumers may use the route, besides the route's own. Default:
    /// only the route's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<AllowedNamespaces>,
    /// Only consumers whose labels match may use the route, in every allowed namespace
    /// (the route's own included). Omitted: every consumer of the allowed namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Namespaces a route is offered to, in the shape of Gateway API's `allowedRoutes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// `Same` (default): the route's own namespace only. `All`: every namespace.
    /// `Selector`: namespaces whose labels match `selector`, and the route's own.
    #[serde(default)]
    pub from: NamespacesFrom,
    /// Namespace labels, for `from: Selector`. Every namespace carries
    /// `kubernetes.io/metadata.name: <name>`, so names can be listed with
    /// `matchExpressions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Where a route's consumers may come from.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum NamespacesFrom {
    /// The route's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
    /// Namespaces whose labels match the selector.
    Selector,
}

/// Answers to repeated requests are served from a cache: in the proxy's memory, or in
/// Redis shared by every proxy when the proxies have one. Only complete, successful
/// answers are stored. See docs/cache.md.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCache {
    /// Whether answers are cached. Default true (the block's presence turns caching on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// How long an answer is served from the cache. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,

    /// Answers larger than this many bytes (as JSON) are not stored. Default 1048576
    /// (1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_entry_bytes: Option<u32>,

    /// Which requests are cached. Default `All`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<CacheableRequests>,

    /// Whether a consumer sees only the answers to its own requests (`PerConsumer`,
    /// the default) or every consumer of the route shares one cache (`Shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,

    /// While an identical request is already on its way upstream, a request waits this
    /// long for its answer instead of sending its own, then goes upstream itself.
    /// `0s` turns this off. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub coalesce_wait: Option<String>,
}

/// Which requests a route caches.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum CacheableRequests {
    /// Every request.
    #[default]
    All,
    /// Only requests with `temperature` 0, whose answers the client expects to repeat.
    Deterministic,
}

/// Who shares a route's cached answers.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum CacheScope {
    /// Each consumer has its own entries.
    #[default]
    PerConsumer,
    /// Every consumer of the route shares the entries.
    Shared,
}

/// How a backend is chosen within a priority tier.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum Strategy {
    /// At random, in proportion to `weight`.
    #[default]
    Weighted,
    /// The less busy of two backends drawn by weight ("power of two choices"): the one
    /// with fewer requests in flight from this proxy.
    LeastInFlight,
    /// The backend with the lowest recent latency (an exponentially weighted moving
    /// average of the time to the provider's response: the whole answer, or a
    /// stream's first event). Backends not measured yet go first, so all get measured.
    LowestLatency,
    /// The backend whose model is cheapest by its AIProvider pricing (input plus
    /// output per million tokens); backends without prices go last.
    LowestCost,
}

/// Ejects a backend after consecutive failures (or a high error rate), for an interval
/// that doubles with each ejection in a row; when it ends, one request probes the backend, and success lets it
/// back. Failures are what retries count as failures (unreachable, timeouts, 5xx, 429).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failures that eject a backend; 0 turns circuit breaking off.
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub consecutive_failures: Option<u32>,

    /// Also eject a backend when at least this percentage of its requests failed within
    /// `window` (and there were at least 10). Off when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub error_rate_percent: Option<u32>,

    /// The window `errorRatePercent` looks at. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub window: Option<String>,

    /// First ejection's length. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ejection: Option<String>,

    /// The longest ejection. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_ejection: Option<String>,
}

/// How failed attempts are retried: on the next backend in the plan (the other
/// backends of the tier, then the next tiers), then again from the start with backoff.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRetry {
    /// Attempts in all, the first included; 1 turns retries and fallback off. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<u32>,

    /// Wait before trying a backend again, doubled on each further try and jittered.
    /// Moving on to a backend not yet tried does not wait. Default 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub backoff: Option<String>,

    /// The longest such wait, and the longest `Retry-After` from a provider that is
    /// honoured; a provider asking for longer is not tried again. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_backoff: Option<String>,

    /// Retries (and fallbacks) may add at most this percentage of the route's requests,
    /// plus a few per second, so that an outage does not multiply the load on the
    /// providers. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: Option<u32>,

    /// Whether a success whose body cannot be read may be tried on the route's next
    /// backend. The provider answered it (and billed it), so it is never asked again
    /// of the same backend; by default the request then fails (502
    /// `upstream_unreadable_response`) rather than paying a second provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_on_unreadable: Option<bool>,
}

/// A request header condition.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// Value to compare with.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
    /// `Exact` (default) or `RegularExpression` (RE2-like syntax, anchored at both ends).
    #[serde(default, rename = "type")]
    pub type_: HeaderMatchType,
}

/// How a header value is compared.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum HeaderMatchType {
    /// The value equals `value`.
    #[default]
    Exact,
    /// The whole value matches the regular expression `value`.
    RegularExpression,
}

/// A provider model that serves a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    /// Name of an AIProvider in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub provider: String,
    /// A model `name` listed by that provider.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Share of traffic within its priority tier. Default 1; 0 takes the backend out.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: u32,
    /// Tier: 0 is tried first; higher tiers are fallbacks. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub priority: u32,
}

/// Timeouts for requests on a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeouts {
    /// Time for a whole non-streaming request, or until a stream's response headers
    /// arrive. Overrides the provider's `timeouts.request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub request: Option<String>,

    /// For streams: time from the request to the first event. A stream that sends
    /// nothing within it (or fails before its first event) fails over to the next
    /// backend, since the client has received nothing yet. No limit when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub first_token: Option<String>,

    /// Time for the whole request across every attempt, retries and backoff included.
    /// No limit beyond the attempts' own when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub total: Option<String>,

    /// For streams: the longest a provider's stream may send nothing (not even a
    /// keep-alive comment); past it the stream ends with an error event. Overrides the
    /// proxy's `--stream-idle-timeout` (120s by default) for this route; `0s`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub stream_idle: Option<String>,
}

fn default_weight() -> u32 {
    1
}
