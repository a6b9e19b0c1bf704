//! `compile()`: objects and Secrets in, a Snapshot and a status per object out.
//!
//! One pass per kind, in dependency order: providers (need Secrets), routes (need
//! providers), consumers (need Secrets and routes' grants), then each consumer's route
//! table (`access`: every tenancy decision), then quotas (need consumers and routes).
//! An object that fails is left out of the Snapshot with conditions saying what to fix;
//! everything else still compiles. The result depends only on the objects, never on the
//! order they arrive in, so replicas that see the same objects build the same Snapshot.

mod access;
mod consumers;
mod inputs;
mod last_good;
mod providers;
mod quotas;
mod refs;
mod routes;
mod status;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tenancy_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use access::NAMESPACE_NAME_LABEL;
pub use inputs::{DEFAULT_NAMESPACE, Inputs, Object, ObjectKey, ObjectKind};
pub use last_good::{KEPT_NOTE, KeptCompile, LastGood, compile_keeping};

use crate::snapshot::{ProviderType, Snapshot};
use crate::v1alpha1::ObjectStatus;

/// What compile produces.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The configuration proxies serve from, sealed (its version is set).
    pub snapshot: Snapshot,
    /// `Accepted` and `ResolvedRefs` for every AIProvider, AIRoute, AIConsumer and AIQuota.
    pub statuses: BTreeMap<ObjectKey, ObjectStatus>,
}

/// Compiles objects into a Snapshot plus a status per object.
pub fn compile(inputs: &Inputs) -> Compiled {
    let mut statuses = BTreeMap::new();
    let providers = providers::compile(inputs, &mut statuses);
    let routes = routes::compile(inputs, &providers, &mut statuses);
    let quickstart_allowed =
        inputs.standalone && providers.values().all(|p| p.kind == ProviderType::Echo);
    let mut consumers =
        consumers::compile(inputs, &routes.grants, quickstart_allowed, &mut statuses);
    let tables = access::tables(
        inputs,
        &routes.routes,
        &routes.grants,
        &mut consumers.consumers,
        &consumers.allowlists,
    );
    access::reachable_conditions(&routes.routes, &tables.shadowed, &mut statuses);
    let quotas = quotas::compile(inputs, &mut statuses);
    let snapshot = Snapshot {
        version: String::new(),
        providers,
        routes: routes.routes,
        route_tables: tables.tables,
        consumers: consumers.consumers,
        quotas,
    }
    .seal();
    Compiled { snapshot, statuses }
}

// === impl Compiled ===

impl Compiled {
    /// Objects that are not fully healthy, with their failing conditions.
    pub fn problems(&self) -> impl Iterator<Item = (&ObjectKey, &ObjectStatus)> {
        self.statuses
            .iter()
            .filter(|(_, status)| status.problems().next().is_some())
    }
}
