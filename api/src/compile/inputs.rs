//! The objects compile reads: the four Switchboard kinds plus Secrets, whether they come
//! from the Kubernetes API (operator) or from YAML files on disk (standalone proxy).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::{AIConsumer, AIProvider, AIQuota, AIRoute};

/// Namespace used for objects that do not name one (files on disk).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Every object compile reads, keyed by namespace and name. Keyed maps make duplicates
/// impossible and iteration order independent of arrival order.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub providers: BTreeMap<ObjectKey, AIProvider>,
    pub routes: BTreeMap<ObjectKey, AIRoute>,
    pub consumers: BTreeMap<ObjectKey, AIConsumer>,
    pub quotas: BTreeMap<ObjectKey, AIQuota>,
    pub secrets: BTreeMap<ObjectKey, Secret>,
    /// Labels of each namespace by name, which routes' `allowedConsumers` namespace
    /// selectors match. A namespace missing here has only the label Kubernetes gives
    /// every namespace, `kubernetes.io/metadata.name: <name>`.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The platform namespace: its routes are offered to other namespaces' consumers
    /// without them naming the route, and its quotas may limit every namespace.
    pub platform_namespace: Option<String>,
    /// True in the standalone proxy: the quickstart's public key is then accepted while
    /// every provider is the built-in echo provider.
    pub standalone: bool,
}

/// One object of a kind compile reads.
// Unboxed: objects are read once per compile and held in one list, never moved about
// on a request path; boxing the large ones would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Object {
    Provider(AIProvider),
    Route(AIRoute),
    Consumer(AIConsumer),
    Quota(AIQuota),
    Secret(Secret),
}

/// The kinds compile reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    AIProvider,
    AIRoute,
    AIConsumer,
    AIQuota,
    Secret,
}

/// Kind, namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

// === impl Inputs ===

impl Inputs {
    /// Adds an object; returns the key of an object it replaced (a duplicate), if any.
    pub fn insert(&mut self, object: Object) -> Option<ObjectKey> {
        let key = object.key();
        let replaced = match object {
            Object::Provider(o) => self.providers.insert(key.clone(), o).is_some(),
            Object::Route(o) => self.routes.insert(key.clone(), o).is_some(),
            Object::Consumer(o) => self.consumers.insert(key.clone(), o).is_some(),
            Object::Quota(o) => self.quotas.insert(key.clone(), o).is_some(),
            Object::Secret(o) => self.secrets.insert(key.clone(), o).is_some(),
        };
        replaced.then_some(key)
    }

    /// The object with this key, if present.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        match key.kind {
            ObjectKind::AIProvider => self.providers.get(key).cloned().map(Object::Provider),
            ObjectKind::AIRoute => self.routes.get(key).cloned().map(Object::Route),
            ObjectKind::AIConsumer => self.consumers.get(key).cloned().map(Object::Consumer),
            ObjectKind::AIQuota => self.quotas.get(key).cloned().map(Object::Quota),
            ObjectKind::Secret => self.secrets.get(key).cloned().map(Object::Secret),
        }
    }

    /// Removes the object with this key; true if it was present.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        match key.kind {
            ObjectKind::AIProvider => self.providers.remove(key).is_some(),
            ObjectKind::AIRoute => self.routes.remove(key).is_some(),
            ObjectKind::AIConsumer => self.consumers.remove(key).is_some(),
            ObjectKind::AIQuota => self.quotas.remove(key).is_some(),
            ObjectKind::Secret => self.secrets.remove(key).is_some(),
        }
    }

    /// The Secrets an object reads (AIProvider `spec.auth`, AIConsumer `spec.keys`),
    /// whether or not they exist.
    pub fn secret_refs(&self, key: &ObjectKey) -> Vec<ObjectKey> {
        let names: Vec<&str> = match key.kind {
            ObjectKind::AIProvider => self
                .providers
                .get(key)
                .and_then(|p| p.spec.auth.as_ref())
                .map(|auth| vec![auth.secret_ref.name.as_str()])
                .unwrap_or_default(),
            ObjectKind::AIConsumer => self
                .consumers
                .get(key)
                .map(|c| {
                    c.spec
                        .keys
                        .iter()
                        .map(|k| k.secret_ref.name.as_str())
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        names
            .into_iter()
            .map(|name| key.sibling(ObjectKind::Secret, name))
            .collect()
    }

    /// Every Secret some object reads.
    pub fn referenced_secrets(&self) -> std::collections::BTreeSet<ObjectKey> {
        let owners = self.providers.keys().chain(self.consumers.keys());
        owners.flat_map(|key| self.secret_refs(key)).collect()
    }

    /// Builds inputs from objects; a later duplicate replaces an earlier one.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut inputs = Self::default();
        for object in objects {
            inputs.insert(object);
        }
        inputs
    }
}

// === impl Object ===

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Provider(_) => ObjectKind::AIProvider,
            Object::Route(_) => ObjectKind::AIRoute,
            Object::Consumer(_) => ObjectKind::AIConsumer,
            Object::Quota(_) => ObjectKind::AIQuota,
            Object::Secret(_) => ObjectKind::Secret,
        }
    }

    /// The object as JSON, for comparing two versions.
    pub fn to_value(&self) -> serde_json::Value {
        let value = match self {
            Object::Provider(o) => serde_json::to_value(o),
            Object::Route(o) => serde_json::to_value(o),
            Object::Consumer(o) => serde_json::to_value(o),
            Object::Quota(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
        };
        // Serializing Kubernetes objects cannot fail: maps with string keys only.
        value.unwrap_or_default()
    }

    pub fn key(&self) -> ObjectKey {
        let meta = match self {
            Object::Provider(o) => o.meta(),
            Object::Route(o) => o.meta(),
            Object::Consumer(o) => o.meta(),
            Object::Quota(o) => o.meta(),
            Object::Secret(o) => o.meta(),
        };
        ObjectKey::new(
            self.kind(),
            meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

// === impl ObjectKey ===

impl ObjectKey {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// `namespace/name`, the form used as a Snapshot key.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Another object with the same namespace.
    pub fn sibling(&self, kind: ObjectKind, name: &str) -> Self {
        Self::new(kind, &self.namespace, name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
