//! AIConsumer pass: gateway keys (stored only as hashes) and allowlists.
//!
//! A key may belong to one consumer only: when two claim the same key, the older keeps
//! it and the other is rejected with `KeyConflict`, since a shared key would make the
//! caller's identity ambiguous. Weak, placeholder and published keys are refused
//! (`crate::keys`).

use std::collections::{BTreeMap, BTreeSet};

use super::access::{Allowlist, Grant};
use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::refs::{age, secret_value};
use super::status::{Problem, Verdict};
use crate::keys::{Weakness, check_gateway_key};
use crate::snapshot::{Consumer, hash_key};
use crate::v1alpha1::ObjectStatus;
use crate::v1alpha1::condition::reasons;

/// Accepted consumers by `namespace/name` (route tables not yet set), and what their
/// owners narrowed each to.
pub(super) struct CompiledConsumers {
    pub consumers: BTreeMap<String, Consumer>,
    pub allowlists: BTreeMap<String, Allowlist>,
}

/// Compiles every AIConsumer. `quickstart_allowed`: the quickstart's public key is
/// accepted (standalone, echo providers only).
pub(super) fn compile(
    inputs: &Inputs,
    grants: &BTreeMap<String, Grant>,
    quickstart_allowed: bool,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) -> CompiledConsumers {
    let mut ordered: Vec<_> = inputs.consumers.iter().collect();
    ordered.sort_by(|a, b| (age(a.1), a.0).cmp(&(age(b.1), b.0)));

    let mut owners: BTreeMap<String, &ObjectKey> = BTreeMap::new();
    let mut compiled = CompiledConsumers {
        consumers: BTreeMap::new(),
        allowlists: BTreeMap::new(),
    };
    for (key, object) in ordered {
        let spec = &object.spec;
        let mut verdict = Verdict::new(object.metadata.generation);

        let mut key_hashes = BTreeSet::new();
        for (i, reference) in spec.keys.iter().enumerate() {
            let field = format!("spec.keys[{i}].secretRef");
            match secret_value(inputs, key, &reference.secret_ref, &field) {
                Ok(value) if let Err(weakness) = check_gateway_key(&value, quickstart_allowed) => {
                    let reason = match weakness {
                        Weakness::TooShort | Weakness::Predictable => reasons::WEAK_KEY,
                        Weakness::Placeholder | Weakness::Published => reasons::PLACEHOLDER_KEY,
                    };
                    verdict.unresolved(Problem::new(
                        reason,
                        format!(
                            "{field}: Secret {:?}: {}",
                            reference.secret_ref.name,
                            weakness.explain()
                        ),
                    ))
                }
                Ok(value) => {
                    let hash = hash_key(&value);
                    match owners.get(&hash) {
                        Some(owner) => {
                            // Another namespace's consumer is not named.
                            let holder = if owner.namespace == key.namespace {
                                format!("AIConsumer {}/{}", owner.namespace, owner.name)
                            } else {
                                "another AIConsumer".to_string()
                            };
                            verdict.reject(Problem::new(
                                reasons::KEY_CONFLICT,
                                format!(
                                    "{field}: this gateway key already belongs to {holder}; \
                                     give each consumer its own key"
                                ),
                            ))
                        }
                        None => {
                            key_hashes.insert(hash);
                        }
                    }
                }
                Err(problem) => verdict.unresolved(problem),
            }
        }
        if key_hashes.is_empty() && verdict.is_accepted() {
            verdict.reject(Problem::new(
                reasons::NO_VALID_KEYS,
                "spec.keys: no gateway key resolved; see the ResolvedRefs condition",
            ));
        }

        let mut allowed_routes = BTreeSet::new();
        let labels = object.metadata.labels.clone().unwrap_or_default();
        for (i, route) in spec.allowed_routes.iter().enumerate() {
            let namespace = route.namespace.as_deref().unwrap_or(&key.namespace);
            let route_key = ObjectKey::new(ObjectKind::AIRoute, namespace, &route.name);
            let field = format!("spec.allowedRoutes[{i}]");
            // Kept in the allowlist either way: naming a route grants nothing.
            allowed_routes.insert(route_key.id());
            let granted = grants
                .get(&route_key.id())
                .is_some_and(|g| g.admits(inputs, &key.namespace, &labels));
            if granted {
                continue;
            }
            if namespace != key.namespace {
                // Whether it exists is the other namespace's business.
                verdict.unresolved(Problem::new(
                    reasons::REF_NOT_PERMITTED,
                    format!(
                        "{field}: AIRoute {namespace}/{} does not exist or does not allow \
                         consumers of namespace {:?}; its owner grants access in the route's \
                         spec.allowedConsumers",
                        route.name, key.namespace
                    ),
                ));
            } else if inputs.routes.contains_key(&route_key) && grants.contains_key(&route_key.id())
            {
                verdict.unresolved(Problem::new(
                    reasons::REF_NOT_PERMITTED,
                    format!(
                        "{field}: AIRoute {:?} does not allow this consumer: its \
                         spec.allowedConsumers.selector does not match this consumer's labels",
                        route.name
                    ),
                ));
            } else if !inputs.routes.contains_key(&route_key) {
                verdict.unresolved(Problem::new(
                    reasons::ROUTE_NOT_FOUND,
                    format!(
                        "{field}: AIRoute {}/{} not found; create it or fix the name",
                        key.namespace, route.name
                    ),
                ));
            }
        }

        if verdict.is_accepted() {
            owners.extend(key_hashes.iter().map(|h| (h.clone(), key)));
            compiled.consumers.insert(
                key.id(),
                Consumer {
                    key_hashes,
                    route_table: 0,
                    labels,
                },
            );
            compiled.allowlists.insert(
                key.id(),
                Allowlist {
                    models: non_empty(spec.allowed_models.iter().cloned().collect()),
                    routes: non_empty(allowed_routes),
                },
            );
        }
        statuses.insert(key.clone(), verdict.into_status());
    }
    compiled
}

fn non_empty(set: BTreeSet<String>) -> Option<BTreeSet<String>> {
    (!set.is_empty()).then_some(set)
}
