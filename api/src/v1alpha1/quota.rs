//! `AIQuota`: limits on requests, tokens and cost per time window.
//!
//! compile() validates quotas and resolves their targets into the Snapshot; the proxy
//! enforces them once quota enforcement lands.

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
    status = "ObjectStatus",
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
}

/// What a quota applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaTarget {
    /// AIConsumer names in the quota's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// AIConsumers in the quota's namespace whose labels match.
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
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QuotaMetric {
    Requests,
    InputTokens,
    OutputTokens,
    TotalTokens,
    #[serde(rename = "CostUSD")]
    CostUsd,
}

/// The window a limit counts over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QuotaWindow {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

/// What happens when the shared counter store is unreachable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    /// Keep serving, enforcing limits per proxy.
    #[default]
    FailOpen,
    /// Refuse requests the quota applies to.
    FailClosed,
}
