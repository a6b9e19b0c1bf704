//! `AIQuota`: limits on requests, tokens and cost per time window, enforced by every
//! proxy before a request goes upstream (see docs/quotas.md).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ObjectStatus;

/// Limits on requests, tokens and cost for some consumers, routes or models.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "AIQuota",
    plural = "aiquotas",
    shortname = "aiq",
    category = "switchboard",
    namespaced,
    status = "QuotaStatus",
    doc = "Limits on requests, tokens and cost per window, for consumers, routes or models.",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
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
#[serde(rename_all = "camelCase")]
pub struct AIQuotaSpec {
    /// What the limits apply to. Empty lists mean "any"; a request must match every
    /// non-empty list.
    #[serde(default)]
    pub target: QuotaTarget,
    /// The limits; the tightest applicable one wins.
    #[schemars(length(min = 1, max = 32))]
    pub limits: Vec<QuotaLimit>,
    /// What to do when the shared counter store cannot be reached. Default `FailOpen`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Whose usage a counter adds up. Default `PerConsumer`: every consumer the quota
    /// applies to has limits of its own. `Shared`: one budget for all of them together
    /// (a team's budget, say).
    #[serde(default)]
    pub scope: QuotaScope,
    /// Output tokens reserved for a request that sets no `max_tokens`, until its real
    /// usage is known. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub default_output_tokens: Option<u32>,
    /// A streamed answer that reaches a token or cost limit: `Cut` (default) ends it
    /// there with finish reason `length`; `Complete` lets it finish and the budget goes
    /// below zero.
    #[serde(default)]
    pub mid_stream: MidStreamPolicy,
    /// Instead of refusing a request over a limit, send it to this AIRoute (in the
    /// quota's namespace), typically a cheaper model. The response says so in
    /// `x-switchboard-quota-fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub fallback_route: Option<String>,
}

/// Whose usage a quota's counters add up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum QuotaScope {
    /// Each consumer has its own counters.
    #[default]
    PerConsumer,
    /// One set of counters for every request the quota applies to.
    Shared,
}

/// What happens to a stream that reaches a token or cost limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum MidStreamPolicy {
    /// End the stream cleanly with finish reason `length`.
    #[default]
    Cut,
    /// Let it complete; the budget goes below zero.
    Complete,
}

/// An AIQuota's status: its conditions, and how much of each limit is used.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    #[serde(flatten)]
    pub object: ObjectStatus,
    /// Usage in the current window of each limit, from the shared counter store
    /// (refreshed by the operator every few tens of seconds; absent without one). Per
    /// consumer for `PerConsumer` quotas, the most used first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub usage: Vec<QuotaUsage>,
}

/// One limit's usage in its current window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// The limit, as `Metric/Window` (for example `CostUSD/Month`).
    pub limit: String,
    /// The consumer (`namespace/name`) for `PerConsumer` quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Used so far in this window (requests, tokens, or US dollars).
    pub consumed: f64,
    /// Left in this window; zero or below when the limit is reached.
    pub remaining: f64,
    /// When the window ends and the count starts again (RFC 3339, UTC).
    pub resets_at: String,
}

/// What a quota applies to: the consumers of its own namespace only (every namespace's
/// for a quota in the platform namespace), narrowed by the fields set here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaTarget {
    /// AIConsumer names in the quota's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// AIConsumers in the quota's namespace whose labels match (in every namespace for
    /// a quota in the platform namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_selector: Option<LabelSelector>,
    /// AIRoute names in the quota's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Model names as clients request them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// One limit: at most `max` of `metric` per `window`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.metric == 'CostUSD' || self.max == double(int(self.max))")
    .message("max must be a whole number unless metric is CostUSD"))]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimit {
    /// What is counted.
    pub metric: QuotaMetric,
    /// The most allowed per window (requests, tokens, or US dollars).
    #[schemars(range(min = 0.0))]
    pub max: f64,
    /// The window: fixed, aligned to UTC (a calendar month for `Month`).
    pub window: QuotaWindow,
}

/// What a limit counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum QuotaMetric {
    Requests,
    InputTokens,
    OutputTokens,
    TotalTokens,
    #[serde(rename = "CostUSD")]
    CostUsd,
}

/// The window a limit counts over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum QuotaWindow {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

/// What happens when the shared counter store is unreachable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum FailurePolicy {
    /// Keep serving, enforcing limits per proxy.
    #[default]
    FailOpen,
    /// Refuse requests the quota applies to.
    FailClosed,
}
