//! Statuses and Events, written by the leader only.
//!
//! Compile decides `Accepted` and `ResolvedRefs`; this module adds `Programmed` from what
//! the connected proxies serve, compares with the status each object carries, and
//! patches the `status` subresource only where something changed (so a quiet cluster
//! sees no writes). A condition keeps its `lastTransitionTime` until its status flips.
//! A Warning Event is published when an object newly gets a failing condition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use switchboard_api::compile::{ObjectKey, ObjectKind};
use switchboard_api::v1alpha1::condition::types;
use switchboard_api::v1alpha1::{
    AIConsumer, AIProvider, AIQuota, AIRoute, Condition, ConditionStatus, ObjectStatus,
};

use crate::metrics::Metrics;
use crate::proxies::ProxyReport;
use crate::watch::Stores;

/// `Programmed` reasons.
pub mod programmed {
    /// Every connected proxy serves a Snapshot with the object's current version.
    pub const PROGRAMMED: &str = "Programmed";
    /// Some connected proxies still serve an older Snapshot.
    pub const PENDING: &str = "Pending";
    /// No proxy is connected to the operator.
    pub const NO_PROXIES: &str = "NoProxies";
    /// The object's current version is not part of the config (see `Accepted`).
    pub const NOT_ACCEPTED: &str = "NotAccepted";
}

/// Status patches in flight at once.
const CONCURRENT_WRITES: usize = 8;

/// What the last compile decided, as the status writer needs it.
#[derive(Debug, Default)]
pub struct Decided {
    /// `Accepted` and `ResolvedRefs` per object.
    pub statuses: BTreeMap<ObjectKey, ObjectStatus>,
    /// Objects whose current version is in the published Snapshot.
    pub programmable: BTreeSet<ObjectKey>,
    /// The published version.
    pub version: String,
    /// The quotas of the published Snapshot, by `namespace/name`.
    pub quotas: BTreeMap<String, switchboard_api::snapshot::Quota>,
    /// The consumers of the published Snapshot (`namespace/name`).
    pub consumers: Vec<String>,
}

/// Writes statuses and Events.
pub struct StatusWriter {
    /// What this replica wrote last per object: the store may lag behind our own
    /// patches, and a second identical patch is a needless write.
    written: std::sync::Mutex<BTreeMap<ObjectKey, ObjectStatus>>,
    client: Client,
    stores: Stores,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

/// An object's status as stored, and how to refer to it.
struct Current {
    status: ObjectStatus,
    reference: ObjectReference,
}

// === impl StatusWriter ===

impl StatusWriter {
    pub fn new(client: Client, stores: Stores, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Self {
            written: std::sync::Mutex::default(),
            client,
            stores,
            recorder,
            metrics,
        }
    }

    /// Brings every object's status in line with `decided` and `proxies`.
    /// Changed statuses are written `CONCURRENT_WRITES` at a time, so that a first sync
    /// of thousands of objects takes seconds, not minutes, without flooding the API.
    pub async fn write_all(&self, decided: &Decided, proxies: &[ProxyReport]) {
        let changed: Vec<(&ObjectKey, Current, ObjectStatus)> = decided
            .statuses
            .iter()
            .filter_map(|(key, compiled)| {
                // None: deleted since the compile.
                let current = self.current(key)?;
                let desired = desired_status(key, compiled, decided, proxies);
                if same(&current.status, &desired) || self.wrote(key, &desired) {
                    return None;
                }
                let desired = stamp_transitions(desired, &current.status);
                Some((key, current, desired))
            })
            .collect();
        futures_util::stream::iter(changed)
            .for_each_concurrent(CONCURRENT_WRITES, |(key, current, desired)| async move {
                if self.patch(key, &desired).await {
                    self.publish_events(&current, &desired).await;
                    self.written_mut().insert(key.clone(), desired);
                }
            })
            .await;
    }

    /// Forgets what was written: a new leader checks every object against its store.
    pub fn forget_written(&self) {
        self.written_mut().clear();
    }

    fn wrote(&self, key: &ObjectKey, desired: &ObjectStatus) -> bool {
        self.written_mut()
            .get(key)
            .is_some_and(|w| same(w, desired))
    }

    fn written_mut(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, ObjectStatus>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when the patch was written.
    async fn patch(&self, key: &ObjectKey, status: &ObjectStatus) -> bool {
        let resource = match key.kind {
            ObjectKind::AIProvider => ApiResource::erase::<AIProvider>(&()),
            ObjectKind::AIRoute => ApiResource::erase::<AIRoute>(&()),
            ObjectKind::AIConsumer => ApiResource::erase::<AIConsumer>(&()),
            ObjectKind::AIQuota => ApiResource::erase::<AIQuota>(&()),
            ObjectKind::Secret => return false,
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &resource);
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        match api
            .patch_status(&key.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                self.metrics.status_patches.with(["ok"]).inc();
                tracing::debug!(object = %key, "status updated");
                true
            }
            Err(error) => {
                self.metrics.status_patches.with(["error"]).inc();
                tracing::warn!(object = %key, %error, "cannot update status; retried on the next change");
                false
            }
        }
    }

    /// A Warning Event for each failing condition the object did not already have.
    async fn publish_events(&self, current: &Current, desired: &ObjectStatus) {
        for condition in &desired.conditions {
            if condition.status != ConditionStatus::False || condition.type_ == types::PROGRAMMED {
                continue;
            }
            let known = current.status.condition(&condition.type_).is_some_and(|c| {
                c.status == ConditionStatus::False
                    && c.reason == condition.reason
                    && c.message == condition.message
            });
            if known {
                continue;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: condition.reason.clone(),
                note: Some(truncate(&condition.message, 1024)),
                action: "Compile".to_string(),
                secondary: None,
            };
            match self.recorder.publish(&event, &current.reference).await {
                Ok(()) => self.metrics.events.inc(),
                Err(error) => tracing::warn!(%error, "cannot publish an Event"),
            }
        }
    }

    fn current(&self, key: &ObjectKey) -> Option<Current> {
        match key.kind {
            ObjectKind::AIProvider => find(&self.stores.providers, key, |o| o.status.clone()),
            ObjectKind::AIRoute => find(&self.stores.routes, key, |o| o.status.clone()),
            ObjectKind::AIConsumer => find(&self.stores.consumers, key, |o| o.status.clone()),
            ObjectKind::AIQuota => find(&self.stores.quotas, key, |o| {
                o.status.as_ref().map(|s| s.object.clone())
            }),
            ObjectKind::Secret => None,
        }
    }
}

fn find<K: Resource<DynamicType = ()> + Clone + 'static>(
    stores: &[Store<K>],
    key: &ObjectKey,
    status: impl Fn(&K) -> Option<ObjectStatus>,
) -> Option<Current> {
    let reference = ObjectRef::new(&key.name).within(&key.namespace);
    let object = stores.iter().find_map(|store| store.get(&reference))?;
    Some(Current {
        status: status(&object).unwrap_or_default(),
        reference: object.object_ref(&()),
    })
}

/// Compile's conditions plus `Programmed`.
pub fn desired_status(
    key: &ObjectKey,
    compiled: &ObjectStatus,
    decided: &Decided,
    proxies: &[ProxyReport],
) -> ObjectStatus {
    let generation = compiled.observed_generation;
    let (status, reason, message) = if !decided.programmable.contains(key) {
        (
            ConditionStatus::False,
            programmed::NOT_ACCEPTED,
            "this version of the object is not part of the config; see the Accepted condition"
                .to_string(),
        )
    } else if proxies.is_empty() {
        (
            ConditionStatus::False,
            programmed::NO_PROXIES,
            "no proxy is connected to the operator".to_string(),
        )
    } else {
        let serving = proxies
            .iter()
            .filter(|p| p.version == decided.version)
            .count();
        if serving == proxies.len() {
            (
                ConditionStatus::True,
                programmed::PROGRAMMED,
                format!("served by all {serving} connected proxies"),
            )
        } else {
            (
                ConditionStatus::False,
                programmed::PENDING,
                format!(
                    "{serving} of {} connected proxies serve config {}",
                    proxies.len(),
                    decided.version
                ),
            )
        }
    };
    let mut desired = compiled.clone();
    desired.conditions.retain(|c| c.type_ != types::PROGRAMMED);
    desired.conditions.push(Condition::new(
        types::PROGRAMMED,
        status,
        reason,
        message,
        generation,
    ));
    desired
}

/// Equal apart from transition times.
pub fn same(current: &ObjectStatus, desired: &ObjectStatus) -> bool {
    let strip = |status: &ObjectStatus| {
        let mut status = status.clone();
        for condition in &mut status.conditions {
            condition.last_transition_time = None;
        }
        status
    };
    strip(current) == strip(desired)
}

/// Keeps each condition's transition time while its status holds; now otherwise.
pub fn stamp_transitions(mut desired: ObjectStatus, current: &ObjectStatus) -> ObjectStatus {
    let now = Time(Timestamp::now());
    for condition in &mut desired.conditions {
        condition.last_transition_time = current
            .condition(&condition.type_)
            .filter(|c| c.status == condition.status)
            .and_then(|c| c.last_transition_time.clone())
            .or_else(|| Some(now.clone()));
    }
    desired
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Keeps statuses current while this replica leads: after each compile, when proxies
/// connect or report a version (here or at another replica), and every `GRACE` so that
/// disconnected proxies are noticed.
pub async fn run(
    writer: StatusWriter,
    mut decided: tokio::sync::watch::Receiver<Arc<Decided>>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    table: Arc<crate::proxies::ProxyTable>,
    reports: crate::reports::Reports,
    reports_changed: Arc<tokio::sync::Notify>,
) {
    let mut local = table.subscribe();
    loop {
        if *leader.borrow_and_update() {
            let current = decided.borrow_and_update().clone();
            let proxies = reports.all(table.connected());
            writer.write_all(&current, &proxies).await;
        } else {
            writer.forget_written();
        }
        tokio::select! {
            changed = decided.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            _ = local.changed() => {}
            () = reports_changed.notified() => {}
            () = tokio::time::sleep(crate::proxies::GRACE) => {}
        }
    }
}

#[cfg(test)]
mod tests;
