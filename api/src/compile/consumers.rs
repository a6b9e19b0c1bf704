//! AIConsumer pass: gateway keys (stored only as hashes) and allowlists.
//!
//! A key may belong to one consumer only: when two claim the same key, the older keeps
//! it and the other is rejected with `KeyConflict`, since a shared key would make the
//! caller's identity ambiguous.

use std::collections::{BTreeMap, BTreeSet};

use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::refs::{age, secret_value};
use super::status::{Problem, Verdict};
use crate::snapshot::{Consumer, hash_key};
use crate::v1alpha1::ObjectStatus;
use crate::v1alpha1::condition::reasons;

/// Gateway keys shorter than this are refused: they are guessable.
pub const MIN_KEY_LENGTH: usize = 16;

/// Compiles every AIConsumer; returns the accepted ones by `namespace/name`.
pub(super) fn compile(
    inputs: &Inputs,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) -> BTreeMap<String, Consumer> {
    let mut ordered: Vec<_> = inputs.consumers.iter().collect();
    ordered.sort_by(|a, b| (age(a.1), a.0).cmp(&(age(b.1), b.0)));

    let mut owners: BTreeMap<String, &ObjectKey> = BTreeMap::new();
    let mut consumers = BTreeMap::new();
    for (key, object) in ordered {
        let spec = &object.spec;
        let mut verdict = Verdict::new(object.metadata.generation);

        let mut key_hashes = BTreeSet::new();
        for (i, reference) in spec.keys.iter().enumerate() {
            let field = format!("spec.keys[{i}].secretRef");
            match secret_value(inputs, key, &reference.secret_ref, &field) {
                Ok(value) if value.len() < MIN_KEY_LENGTH => verdict.unresolved(Problem::new(
                    reasons::INVALID,
                    format!(
                        "{field}: the gateway key in Secret {:?} is shorter than {MIN_KEY_LENGTH} \
                         characters; use a long random key",
                        reference.secret_ref.name
                    ),
                )),
                Ok(value) => {
                    let hash = hash_key(&value);
                    match owners.get(&hash) {
                        Some(owner) => verdict.reject(Problem::new(
                            reasons::KEY_CONFLICT,
                            format!(
                                "{field}: this gateway key already belongs to AIConsumer {}/{}; \
                                 give each consumer its own key",
                                owner.namespace, owner.name
                            ),
                        )),
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
        for (i, route) in spec.allowed_routes.iter().enumerate() {
            let namespace = route.namespace.as_deref().unwrap_or(&key.namespace);
            let route_key = ObjectKey::new(ObjectKind::AIRoute, namespace, &route.name);
            if !inputs.routes.contains_key(&route_key) {
                // Kept in the allowlist: naming a missing route grants nothing.
                verdict.unresolved(Problem::new(
                    reasons::ROUTE_NOT_FOUND,
                    format!(
                        "spec.allowedRoutes[{i}]: AIRoute {namespace}/{} not found; create it or fix the name",
                        route.name
                    ),
                ));
            }
            allowed_routes.insert(route_key.id());
        }

        if verdict.is_accepted() {
            owners.extend(key_hashes.iter().map(|h| (h.clone(), key)));
            consumers.insert(
                key.id(),
                Consumer {
                    key_hashes,
                    allowed_models: non_empty(spec.allowed_models.iter().cloned().collect()),
                    allowed_routes: non_empty(allowed_routes),
                    labels: object.metadata.labels.clone().unwrap_or_default(),
                },
            );
        }
        statuses.insert(key.clone(), verdict.into_status());
    }
    consumers
}

fn non_empty(set: BTreeSet<String>) -> Option<BTreeSet<String>> {
    (!set.is_empty()).then_some(set)
}
