//! Status conditions in the Gateway API style, and the reasons Switchboard uses.
//!
//! `compile()` decides `Accepted` and `ResolvedRefs`; the operator adds `Programmed`
//! once every proxy serves a Snapshot that includes the object. Transition times are
//! stamped by whoever writes the status (the operator), so compile stays pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types.
pub mod types {
    /// The object is valid and is part of the compiled configuration.
    pub const ACCEPTED: &str = "Accepted";
    /// Every reference (Secrets, providers, models, routes, consumers) resolved.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// Every connected proxy serves a Snapshot that includes the object.
    pub const PROGRAMMED: &str = "Programmed";
    /// AIRoute: every consumer the route allows, and that chose it, reaches it for each
    /// of its model names (no route that comes first for them has the same match).
    pub const REACHABLE: &str = "Reachable";
}

/// Condition reasons. Each names what went wrong so a person knows what to fix.
pub mod reasons {
    /// `Accepted=True`.
    pub const ACCEPTED: &str = "Accepted";
    /// `ResolvedRefs=True`.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A field's value is invalid (bad URL, duration, regex, certificate, CEL rule).
    pub const INVALID: &str = "Invalid";
    /// The same model name appears twice in one AIProvider.
    pub const DUPLICATE_MODEL: &str = "DuplicateModel";
    /// Another AIRoute already serves this model name with the same match.
    pub const MODEL_CONFLICT: &str = "ModelConflict";
    /// Another AIConsumer already uses the same gateway key.
    pub const KEY_CONFLICT: &str = "KeyConflict";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret exists but lacks the key, or the value is empty.
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    /// A route backend names an AIProvider that does not exist.
    pub const PROVIDER_NOT_FOUND: &str = "ProviderNotFound";
    /// A route backend names an AIProvider that exists but was not accepted.
    pub const PROVIDER_NOT_ACCEPTED: &str = "ProviderNotAccepted";
    /// A route backend names a model its AIProvider does not list.
    pub const UNKNOWN_MODEL: &str = "UnknownModel";
    /// A reference names an AIRoute that does not exist.
    pub const ROUTE_NOT_FOUND: &str = "RouteNotFound";
    /// A reference names an AIConsumer that does not exist.
    pub const CONSUMER_NOT_FOUND: &str = "ConsumerNotFound";
    /// Every backend of a route failed to resolve.
    pub const NO_VALID_BACKENDS: &str = "NoValidBackends";
    /// Every key of a consumer failed to resolve.
    pub const NO_VALID_KEYS: &str = "NoValidKeys";
    /// A gateway key is too short or too predictable.
    pub const WEAK_KEY: &str = "WeakKey";
    /// A gateway key is a placeholder or published in the examples.
    pub const PLACEHOLDER_KEY: &str = "PlaceholderKey";
    /// A reference crosses into another namespace that did not grant it (or names an
    /// object there that does not exist: the two look the same from outside).
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// `Reachable=True`.
    pub const REACHABLE: &str = "Reachable";
    /// For some consumers, another route with the same model name and header matches
    /// comes first.
    pub const SHADOWED: &str = "Shadowed";
}

/// `True`, `False` or `Unknown`, as in every Kubernetes condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One status condition (the shape of Kubernetes' `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: `Accepted`, `ResolvedRefs` or `Programmed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds.
    pub status: ConditionStatus,
    /// CamelCase reason a program can act on, for example `SecretNotFound`.
    pub reason: String,
    /// What is wrong and how to fix it, for a person.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed. Set by the writer of the status, not by compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// The status every Switchboard kind carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed` conditions.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

// === impl Condition ===

impl Condition {
    /// A condition without a transition time; compile's output.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
            observed_generation,
            last_transition_time: None,
        }
    }
}

// === impl ObjectStatus ===

impl ObjectStatus {
    /// The condition of the given type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// True when the object is part of the compiled configuration.
    pub fn is_accepted(&self) -> bool {
        self.condition(types::ACCEPTED)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// Conditions that are not `True`: what a person should look at.
    pub fn problems(&self) -> impl Iterator<Item = &Condition> {
        self.conditions
            .iter()
            .filter(|c| c.status != ConditionStatus::True)
    }
}
