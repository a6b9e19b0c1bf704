//! Switchboard's Kubernetes API, group `switchboard.dev`, version `v1alpha1`.
//!
//! Every kind is namespaced. Field docs here become the CRD's descriptions, so they
//! are written for the person running `kubectl explain`.

// NB: kube-derive takes one `printcolumn(...)` per column, which clippy reads as
// duplicated attributes.
pub mod condition;
#[allow(clippy::duplicated_attributes)]
pub mod consumer;
#[allow(clippy::duplicated_attributes)]
pub mod provider;
#[allow(clippy::duplicated_attributes)]
pub mod quota;
#[allow(clippy::duplicated_attributes)]
pub mod route;

pub use condition::{Condition, ConditionStatus, ObjectStatus};
pub use consumer::{AIConsumer, AIConsumerSpec, ConsumerKey, RouteReference};
pub use provider::{
    AIProvider, AIProviderSpec, AnthropicSettings, AzureSettings, EchoSettings, ModelPricing,
    ProviderAuth, ProviderModel, ProviderTimeouts, ProviderTls, ProviderType,
};
pub use quota::{
    AIQuota, AIQuotaSpec, FailurePolicy, MidStreamPolicy, QuotaLimit, QuotaMetric, QuotaScope,
    QuotaStatus, QuotaTarget, QuotaUsage, QuotaWindow,
};
pub use route::{
    AIRoute, AIRouteSpec, AllowedConsumers, AllowedNamespaces, CacheScope, CacheableRequests,
    CircuitBreaker, HeaderMatch, HeaderMatchType, NamespacesFrom, RouteBackend, RouteCache,
    RouteRetry, RouteTimeouts, Strategy,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Switchboard kind.
pub const GROUP: &str = "switchboard.dev";
/// The API version of every kind in this module.
pub const VERSION: &str = "v1alpha1";

/// A key inside a Secret in the same namespace as the object that refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the referring object's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data` or `stringData`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Gateway-API-style duration: one to four groups of a number and a unit (h, m, s, ms),
/// for example `30s`, `1m30s`, `500ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";
