//! `AIConsumer`: an application or team that calls the gateway with its own keys.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ObjectStatus, SecretKeyRef};

/// A calling application or team: its gateway keys and what it may use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "AIConsumer",
    plural = "aiconsumers",
    shortname = "aic",
    category = "switchboard",
    namespaced,
    status = "ObjectStatus",
    doc = "An application or team calling the gateway: its gateway keys and what it may use.",
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
pub struct AIConsumerSpec {
    /// Gateway keys, each in a Secret. Several keys may be valid at once so a key can be
    /// rotated without downtime: add the new one, move clients, remove the old one.
    #[schemars(length(min = 1, max = 16))]
    pub keys: Vec<ConsumerKey>,
    /// If set, the only model names this consumer may request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allowed_models: Vec<String>,
    /// If set, the only AIRoutes this consumer may use. Also how a consumer chooses a
    /// route of another namespace (other than the platform namespace): such a route
    /// serves it only when named here and the route's `allowedConsumers` allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allowed_routes: Vec<RouteReference>,
}

/// A gateway key kept in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerKey {
    /// The Secret key holding the gateway key: at least 16 characters, not made of a few
    /// repeated characters, and not a placeholder or a key published in the examples.
    pub secret_ref: SecretKeyRef,
}

/// A reference to an AIRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteReference {
    /// Name of the AIRoute.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the AIRoute; defaults to the consumer's namespace. A route of another
    /// namespace must allow this consumer in its `allowedConsumers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
