//! AIQuota pass: limits and resolved targets.
//!
//! A quota that names a missing consumer or route stays in force for the targets that
//! do exist (`ResolvedRefs=False`): dropping it would lift limits someone relies on.
//!
//! A quota limits consumers of its own namespace only; one in the platform namespace
//! may limit every namespace's (an empty target, or a consumer selector, then reaches
//! across namespaces). So no team can throttle another.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Selector, SelectorExt};

use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::refs::cel_rules;
use super::status::{Problem, Verdict};
use crate::snapshot::{Quota, QuotaLimit};
use crate::v1alpha1::ObjectStatus;
use crate::v1alpha1::condition::reasons;

/// Output tokens reserved for a request without `max_tokens` when the quota sets none.
pub const DEFAULT_OUTPUT_TOKENS: u32 = 1024;

/// Compiles every AIQuota; returns the accepted ones by `namespace/name`.
pub(super) fn compile(
    inputs: &Inputs,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) -> BTreeMap<String, Quota> {
    let mut quotas = BTreeMap::new();
    for (key, object) in &inputs.quotas {
        let platform = inputs.platform_namespace.as_deref() == Some(key.namespace.as_str());
        // The consumers this quota may limit at all.
        let in_reach = |consumer: &ObjectKey| platform || consumer.namespace == key.namespace;
        let spec = &object.spec;
        let mut verdict = Verdict::new(object.metadata.generation);
        if let Err(problem) = cel_rules(object) {
            verdict.reject(problem);
        }
        let target = &spec.target;

        let mut consumers = BTreeSet::new();
        for (i, name) in target.consumers.iter().enumerate() {
            let consumer = key.sibling(ObjectKind::AIConsumer, name);
            if !inputs.consumers.contains_key(&consumer) {
                verdict.unresolved(Problem::new(
                    reasons::CONSUMER_NOT_FOUND,
                    format!(
                        "spec.target.consumers[{i}]: AIConsumer {name:?} not found in namespace {:?}",
                        key.namespace
                    ),
                ));
            }
            consumers.insert(consumer.id());
        }
        if let Some(selector) = &target.consumer_selector {
            match Selector::try_from(selector.clone()) {
                Ok(selector) => {
                    let matching = inputs.consumers.iter().filter(|(k, c)| {
                        in_reach(k)
                            && selector.matches(&c.metadata.labels.clone().unwrap_or_default())
                    });
                    consumers.extend(matching.map(|(k, _)| k.id()));
                }
                Err(e) => verdict.reject(Problem::new(
                    reasons::INVALID,
                    format!("spec.target.consumerSelector: {e}"),
                )),
            }
        }

        let mut routes = BTreeSet::new();
        for (i, name) in target.routes.iter().enumerate() {
            let route = key.sibling(ObjectKind::AIRoute, name);
            if !inputs.routes.contains_key(&route) {
                verdict.unresolved(Problem::new(
                    reasons::ROUTE_NOT_FOUND,
                    format!(
                        "spec.target.routes[{i}]: AIRoute {name:?} not found in namespace {:?}",
                        key.namespace
                    ),
                ));
            }
            routes.insert(route.id());
        }

        // A missing fallback route leaves the quota in force, refusing instead.
        let fallback_route = spec.fallback_route.as_ref().and_then(|name| {
            let route = key.sibling(ObjectKind::AIRoute, name);
            if inputs.routes.contains_key(&route) {
                Some(route.id())
            } else {
                verdict.unresolved(Problem::new(
                    reasons::ROUTE_NOT_FOUND,
                    format!(
                        "spec.fallbackRoute: AIRoute {name:?} not found in namespace {:?}; requests over a limit are refused meanwhile",
                        key.namespace
                    ),
                ));
                None
            }
        });

        for (i, limit) in spec.limits.iter().enumerate() {
            if !limit.max.is_finite() || limit.max < 0.0 {
                verdict.reject(Problem::new(
                    reasons::INVALID,
                    format!("spec.limits[{i}].max: must be zero or a positive number"),
                ));
            }
        }
        if spec.limits.is_empty() {
            verdict.reject(Problem::new(
                reasons::INVALID,
                "spec.limits: list at least one limit",
            ));
        }

        if verdict.is_accepted() {
            let targets_consumers =
                !target.consumers.is_empty() || target.consumer_selector.is_some();
            let consumers = if targets_consumers {
                Some(consumers)
            } else if platform {
                // Every consumer, in every namespace.
                None
            } else {
                Some(
                    inputs
                        .consumers
                        .keys()
                        .filter(|k| in_reach(k))
                        .map(ObjectKey::id)
                        .collect(),
                )
            };
            quotas.insert(
                key.id(),
                Quota {
                    consumers,
                    routes: (!target.routes.is_empty()).then_some(routes),
                    models: (!target.models.is_empty())
                        .then(|| target.models.iter().cloned().collect()),
                    limits: spec
                        .limits
                        .iter()
                        .map(|l| QuotaLimit {
                            metric: l.metric,
                            max: l.max,
                            window: l.window,
                        })
                        .collect(),
                    failure_policy: spec.failure_policy,
                    scope: spec.scope,
                    default_output_tokens: spec
                        .default_output_tokens
                        .unwrap_or(DEFAULT_OUTPUT_TOKENS),
                    mid_stream: spec.mid_stream,
                    fallback_route,
                },
            );
        }
        statuses.insert(key.clone(), verdict.into_status());
    }
    quotas
}
