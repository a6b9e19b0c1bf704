//! Tenancy: which consumers may use which routes, and in what order a consumer's
//! request looks at them. Every access decision is made here, once per compile; the
//! proxy only reads the resulting tables.
//!
//! Namespaces are tenant boundaries, as in Gateway API: crossing one is granted by the
//! owner of the target, never taken. A route serves the consumers of its own namespace.
//! A consumer of another namespace may use it only when
//! - the route grants it (`spec.allowedConsumers`: the route's owner decides), and
//! - the route is in the platform namespace, or the consumer names it in
//!   `spec.allowedRoutes` (the consumer's owner decides too, so no route can capture a
//!   namespace's traffic by serving a model name it also uses).
//!
//! A consumer's request looks at its own namespace's routes first, then the platform
//! namespace's, then other granted routes; within each, routes with more header
//! matches first, then older. A route that comes later with the same model name and
//! header matches as an earlier one can never serve that consumer: it is shadowed
//! there, and its `Reachable` condition says so.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Selector, SelectorExt};

use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::refs::age;
use super::status::Problem;
use crate::snapshot::{Consumer, HeaderMatchType, Route, RouteTable};
use crate::v1alpha1::condition::{reasons, types};
use crate::v1alpha1::{AllowedConsumers, Condition, ConditionStatus, NamespacesFrom, ObjectStatus};

/// The label Kubernetes gives every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A route's `allowedConsumers`, its selectors parsed.
#[derive(Debug)]
pub(super) struct Grant {
    namespace: String,
    from: NamespacesFrom,
    namespaces: Option<Selector>,
    consumers: Option<Selector>,
}

/// What a consumer's owner narrowed it to: `None` means no narrowing.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Allowlist {
    pub models: Option<BTreeSet<String>>,
    pub routes: Option<BTreeSet<String>>,
}

/// Where a route stands for one consumer; lower is looked at first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    OwnNamespace,
    Platform,
    Granted,
}

// === impl Grant ===

impl Grant {
    /// Parses a route's `allowedConsumers`; an invalid selector is a problem.
    pub fn compile(route: &ObjectKey, spec: Option<&AllowedConsumers>) -> Result<Self, Problem> {
        let selector = |selector, field: &str| {
            Selector::try_from(selector).map_err(|e| {
                Problem::new(
                    reasons::INVALID,
                    format!("spec.allowedConsumers.{field}: {e}"),
                )
            })
        };
        let namespaces = spec.and_then(|s| s.namespaces.as_ref());
        let from = namespaces.map(|n| n.from).unwrap_or_default();
        let namespace_selector = match namespaces.and_then(|n| n.selector.clone()) {
            Some(s) => Some(selector(s, "namespaces.selector")?),
            None if from == NamespacesFrom::Selector => {
                return Err(Problem::new(
                    reasons::INVALID,
                    "spec.allowedConsumers.namespaces.selector: required when from is Selector",
                ));
            }
            None => None,
        };
        let consumers = match spec.and_then(|s| s.selector.clone()) {
            Some(s) => Some(selector(s, "selector")?),
            None => None,
        };
        Ok(Self {
            namespace: route.namespace.clone(),
            from,
            namespaces: namespace_selector,
            consumers,
        })
    }

    /// Whether the route's owner lets a consumer in `namespace` with `labels` use it.
    pub fn admits(
        &self,
        inputs: &Inputs,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let namespace_ok = namespace == self.namespace
            || match self.from {
                NamespacesFrom::Same => false,
                NamespacesFrom::All => true,
                NamespacesFrom::Selector => self
                    .namespaces
                    .as_ref()
                    .is_some_and(|s| s.matches(&namespace_labels(inputs, namespace))),
            };
        namespace_ok && self.consumers.as_ref().is_none_or(|s| s.matches(labels))
    }
}

/// A namespace's labels, with the name label Kubernetes always sets.
fn namespace_labels(inputs: &Inputs, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = inputs
        .namespaces
        .get(namespace)
        .cloned()
        .unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
    labels
}

/// What [`tables`] produces.
pub(super) struct Tables {
    pub tables: Vec<RouteTable>,
    /// Per shadowed route: (consumer namespace, model name) pairs it cannot serve.
    pub shadowed: BTreeMap<String, BTreeSet<(String, String)>>,
}

/// Builds each consumer's route table (setting `Consumer::route_table`). Consumers
/// that may use the same routes share a table.
pub(super) fn tables(
    inputs: &Inputs,
    routes: &BTreeMap<String, Route>,
    grants: &BTreeMap<String, Grant>,
    consumers: &mut BTreeMap<String, Consumer>,
    allowlists: &BTreeMap<String, Allowlist>,
) -> Tables {
    // Route facts that do not depend on the consumer, computed once.
    let facts: Vec<RouteFacts<'_>> = routes
        .iter()
        .filter_map(|(id, route)| {
            let (namespace, name) = id.split_once('/')?;
            let key = ObjectKey::new(ObjectKind::AIRoute, namespace, name);
            Some(RouteFacts {
                id,
                namespace,
                route,
                grant: grants.get(id)?,
                age: inputs.routes.get(&key).and_then(age),
                headers: match_key(route),
            })
        })
        .collect();

    let mut shadowed: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut by_audience: BTreeMap<(String, BTreeMap<String, String>, Allowlist), usize> =
        BTreeMap::new();
    let mut by_table: BTreeMap<RouteTable, usize> = BTreeMap::new();
    let mut tables = Vec::new();
    let no_allowlist = Allowlist::default();
    // Labels matter only where some route selects consumers by them; otherwise every
    // consumer of a namespace without allowlists shares one table, computed once.
    let labels_matter = grants.values().any(|g| g.consumers.is_some());
    let no_labels = BTreeMap::new();
    for (id, consumer) in consumers.iter_mut() {
        let namespace = id.split_once('/').map_or(id.as_str(), |(ns, _)| ns);
        let allowlist = allowlists.get(id).unwrap_or(&no_allowlist);
        let labels = if labels_matter {
            &consumer.labels
        } else {
            &no_labels
        };
        let audience = (namespace.to_string(), labels.clone(), allowlist.clone());
        if let Some(&index) = by_audience.get(&audience) {
            consumer.route_table = index;
            continue;
        }
        let table = table_for(
            inputs,
            &facts,
            namespace,
            &consumer.labels,
            allowlist,
            &mut shadowed,
        );
        let index = *by_table.entry(table.clone()).or_insert_with(|| {
            tables.push(table);
            tables.len() - 1
        });
        by_audience.insert(audience, index);
        consumer.route_table = index;
    }
    Tables { tables, shadowed }
}

/// A route for one model name, with what orders it: tier, then more header matches.
type Candidate<'a> = (Tier, std::cmp::Reverse<usize>, &'a RouteFacts<'a>);

struct RouteFacts<'a> {
    id: &'a str,
    namespace: &'a str,
    route: &'a Route,
    grant: &'a Grant,
    age: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    headers: Vec<(String, String, HeaderMatchType)>,
}

/// The route table of consumers in `namespace` with `labels` and `allowlist`.
fn table_for(
    inputs: &Inputs,
    facts: &[RouteFacts<'_>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    allowlist: &Allowlist,
    shadowed: &mut BTreeMap<String, BTreeSet<(String, String)>>,
) -> RouteTable {
    let platform = inputs.platform_namespace.as_deref();
    let mut candidates: BTreeMap<&str, Vec<Candidate<'_>>> = BTreeMap::new();
    for fact in facts {
        let named = allowlist.routes.as_ref().map(|r| r.contains(fact.id));
        if named == Some(false) || !fact.grant.admits(inputs, namespace, labels) {
            continue;
        }
        let tier = if fact.namespace == namespace {
            Tier::OwnNamespace
        } else if Some(fact.namespace) == platform {
            Tier::Platform
        } else if named == Some(true) {
            Tier::Granted
        } else {
            // Granted, but this consumer's owner did not choose it.
            continue;
        };
        for model in &fact.route.models {
            if allowlist.models.as_ref().is_none_or(|m| m.contains(model)) {
                candidates.entry(model).or_default().push((
                    tier,
                    std::cmp::Reverse(fact.route.headers.len()),
                    fact,
                ));
            }
        }
    }

    let mut table = RouteTable::default();
    for (model, mut routes) in candidates {
        routes.sort_by(|a, b| (a.0, a.1, &a.2.age, a.2.id).cmp(&(b.0, b.1, &b.2.age, b.2.id)));
        let mut seen = BTreeSet::new();
        let mut ids = Vec::new();
        for (tier, _, fact) in routes {
            if seen.insert(&fact.headers) {
                ids.push(fact.id.to_string());
            } else if tier == Tier::Granted {
                // A namespace's own routes and the platform's come first by design;
                // a granted route hidden behind one with the same match is news to
                // its owner.
                shadowed
                    .entry(fact.id.to_string())
                    .or_default()
                    .insert((namespace.to_string(), model.to_string()));
            }
        }
        table.models.insert(model.to_string(), ids);
    }
    table
}

/// A route's header matches in a canonical order: two routes with the same model name
/// and the same key can never both serve one consumer.
pub(super) fn match_key(route: &Route) -> Vec<(String, String, HeaderMatchType)> {
    let mut headers: Vec<_> = route
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone(), h.kind))
        .collect();
    headers.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    headers
}

/// Adds the `Reachable` condition to every accepted route's status.
pub(super) fn reachable_conditions(
    routes: &BTreeMap<String, Route>,
    shadowed: &BTreeMap<String, BTreeSet<(String, String)>>,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) {
    for id in routes.keys() {
        let Some((namespace, name)) = id.split_once('/') else {
            continue;
        };
        let key = ObjectKey::new(ObjectKind::AIRoute, namespace, name);
        let Some(status) = statuses.get_mut(&key) else {
            continue;
        };
        let condition = match shadowed.get(id) {
            None => Condition::new(
                types::REACHABLE,
                ConditionStatus::True,
                reasons::REACHABLE,
                "",
                status.observed_generation,
            ),
            Some(pairs) => {
                let list: Vec<String> = pairs
                    .iter()
                    .map(|(ns, model)| format!("{model:?} for consumers in namespace {ns:?}"))
                    .collect();
                Condition::new(
                    types::REACHABLE,
                    ConditionStatus::False,
                    reasons::SHADOWED,
                    format!(
                        "never used for {}: a route of the platform namespace or an older \
                         granted route serves the same model name with the same header \
                         matches and comes first; rename the model, add a header match, or \
                         ask those consumers' owners to drop this route from allowedRoutes",
                        list.join(", ")
                    ),
                    status.observed_generation,
                )
            }
        };
        status.conditions.push(condition);
    }
}
