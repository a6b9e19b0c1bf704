//! Sharing proxy reports between operator replicas, so the leader can tell whether
//! *every* proxy serves a config, whichever replica each proxy is connected to.
//!
//! Each replica keeps one Lease of its own (`<lease-name>-proxies-<identity>`, labelled
//! `switchboard.dev/proxy-report`) whose annotation lists the proxies connected to it
//! and their versions. It rewrites it when that list changes and renews it every few
//! seconds; a replica that dies stops renewing and its report is ignored after
//! `STALE`. Everyone watches these Leases; the leader merges them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::leader::LeaseConfig;
use crate::proxies::{ProxyReport, ProxyTable};

/// Label on report Leases; its value is the election Lease's name.
pub const REPORT_LABEL: &str = "switchboard.dev/proxy-report";
/// Annotation holding the JSON list of `ProxyReport`s.
pub const PROXIES_ANNOTATION: &str = "switchboard.dev/proxies";
/// A report is rewritten at least this often.
const RENEW: Duration = Duration::from_secs(5);
/// A report not renewed for this long belongs to a dead replica.
const STALE: Duration = Duration::from_secs(20);
/// Changes to the local table are written together within this window.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The reports of every replica.
#[derive(Clone)]
pub struct Reports {
    identity: String,
    store: Store<Lease>,
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("identity", &self.identity)
            .finish()
    }
}

/// Starts writing this replica's report and watching everyone's. `changed` is
/// notified when another replica's report changes.
pub fn start(
    client: &Client,
    lease: &LeaseConfig,
    table: Arc<ProxyTable>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> (Reports, JoinHandle<()>) {
    let (election_lease, identity) = (lease.name.as_str(), lease.identity.as_str());
    let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let selector = format!("{REPORT_LABEL}={election_lease}");
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels(&selector)).default_backoff(),
    );
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::warn!(%error, "watch of proxy reports failed; retrying"),
            }
        }
    });

    let name = format!("{election_lease}-proxies-{identity}");
    let label = election_lease.to_string();
    let me = identity.to_string();
    // Not in `tasks`: shutdown waits for it to remove the report rather than abort it.
    let writer = tokio::spawn(async move {
        let mut local = table.subscribe();
        loop {
            let reports = table.connected();
            if let Err(error) = write(&api, &name, &label, &me, &reports).await {
                tracing::warn!(%error, "cannot write this replica's proxy report");
            }
            tokio::select! {
                _ = local.changed() => tokio::time::sleep(DEBOUNCE).await,
                () = tokio::time::sleep(RENEW) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Leaving: remove the report so the leader stops counting our proxies at once.
        let _ = api.delete(&name, &Default::default()).await;
    });
    let reports = Reports {
        identity: identity.to_string(),
        store,
    };
    (reports, writer)
}

async fn write(
    api: &Api<Lease>,
    name: &str,
    label: &str,
    identity: &str,
    reports: &[ProxyReport],
) -> Result<(), kube::Error> {
    let proxies = serde_json::to_string(reports).unwrap_or_else(|_| "[]".to_string());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                REPORT_LABEL.to_string(),
                label.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(PROXIES_ANNOTATION.to_string(), proxies)])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_duration_seconds: i32::try_from(STALE.as_secs()).ok(),
            ..LeaseSpec::default()
        }),
    };
    let mut value = serde_json::to_value(&lease).unwrap_or_default();
    value["apiVersion"] = "coordination.k8s.io/v1".into();
    value["kind"] = "Lease".into();
    api.patch(
        name,
        &PatchParams::apply("switchboard-operator").force(),
        &Patch::Apply(value),
    )
    .await
    .map(|_| ())
}

// === impl Reports ===

impl Reports {
    /// Every connected proxy: `local` (this replica's, freshest) plus the fresh reports
    /// of other replicas. A proxy that moved between replicas counts once, by its latest
    /// connection.
    pub fn all(&self, local: Vec<ProxyReport>) -> Vec<ProxyReport> {
        let now = Timestamp::now();
        let mut merged: BTreeMap<String, ProxyReport> = BTreeMap::new();
        let others = self.store.state().into_iter().filter(|lease| {
            let spec = lease.spec.as_ref();
            let holder = spec.and_then(|s| s.holder_identity.as_deref());
            let renewed = spec.and_then(|s| s.renew_time.as_ref());
            let fresh = renewed
                .is_some_and(|t| now.duration_since(t.0).as_secs_f64() < STALE.as_secs_f64());
            holder != Some(self.identity.as_str()) && fresh
        });
        let remote = others.flat_map(|lease| {
            lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROXIES_ANNOTATION))
                .and_then(|json| serde_json::from_str::<Vec<ProxyReport>>(json).ok())
                .unwrap_or_default()
        });
        for report in local.into_iter().chain(remote) {
            match merged.get(&report.id) {
                Some(existing) if existing.connected_since >= report.connected_since => {}
                _ => {
                    merged.insert(report.id.clone(), report);
                }
            }
        }
        merged.into_values().collect()
    }
}
