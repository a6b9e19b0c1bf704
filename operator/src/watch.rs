//! Reflectors over the four Switchboard kinds and Secrets: local caches kept current by
//! watches, and a trigger that fires on every change.
//!
//! kube's watcher does the hard parts: it lists, then watches from the list's
//! resourceVersion; when the watch breaks or the version expires (410 Gone) it relists
//! and the store swaps in the complete new state, so nothing is lost across a restart.
//! Errors retry with exponential backoff.

use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use switchboard_api::compile::{Inputs, Object, ObjectKey, ObjectKind};
use switchboard_api::v1alpha1::{AIConsumer, AIProvider, AIQuota, AIRoute};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// The caches, one store per kind and watched namespace.
#[derive(Clone)]
pub struct Stores {
    pub providers: Vec<Store<AIProvider>>,
    pub routes: Vec<Store<AIRoute>>,
    pub consumers: Vec<Store<AIConsumer>>,
    pub quotas: Vec<Store<AIQuota>>,
    pub secrets: Vec<Store<Secret>>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the Secret store's content.
        f.debug_struct("Stores")
            .field(
                "providers",
                &self.providers.iter().map(Store::len).sum::<usize>(),
            )
            .field("routes", &self.routes.iter().map(Store::len).sum::<usize>())
            .field(
                "consumers",
                &self.consumers.iter().map(Store::len).sum::<usize>(),
            )
            .field("quotas", &self.quotas.iter().map(Store::len).sum::<usize>())
            .field(
                "secrets",
                &self.secrets.iter().map(Store::len).sum::<usize>(),
            )
            .finish()
    }
}

/// Starts a reflector per kind and namespace (all namespaces when `namespaces` is
/// empty). Each change calls `trigger.notify_one()`. The tasks run until `tasks` drops.
pub fn start(
    client: &Client,
    namespaces: &[String],
    trigger: &Arc<Notify>,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) -> Stores {
    let mut watch = Watch {
        client,
        namespaces,
        trigger,
        metrics,
        tasks,
    };
    Stores {
        providers: watch.kind("AIProvider"),
        routes: watch.kind("AIRoute"),
        consumers: watch.kind("AIConsumer"),
        quotas: watch.kind("AIQuota"),
        secrets: watch.kind("Secret"),
    }
}

struct Watch<'a> {
    client: &'a Client,
    namespaces: &'a [String],
    trigger: &'a Arc<Notify>,
    metrics: &'a Arc<Metrics>,
    tasks: &'a mut JoinSet<()>,
}

impl Watch<'_> {
    fn kind<K>(&mut self, label: &'static str) -> Vec<Store<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let apis: Vec<Api<K>> = if self.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect()
        };
        apis.into_iter()
            .map(|api| {
                let (store, writer) = reflector::store();
                let stream = reflector::reflector(
                    writer,
                    watcher(api, watcher::Config::default()).default_backoff(),
                );
                let trigger = self.trigger.clone();
                let metrics = self.metrics.clone();
                self.tasks.spawn(async move {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(_) => trigger.notify_one(),
                            Err(error) => {
                                metrics.watch_errors.with_label_values(&[label]).inc();
                                tracing::warn!(kind = label, %error, "watch failed; retrying with backoff");
                            }
                        }
                    }
                });
                store
            })
            .collect()
    }
}

// === impl Stores ===

impl Stores {
    /// Waits until every store has completed its first list.
    pub async fn ready(&self) {
        for store in &self.providers {
            let _ = store.wait_until_ready().await;
        }
        for store in &self.routes {
            let _ = store.wait_until_ready().await;
        }
        for store in &self.consumers {
            let _ = store.wait_until_ready().await;
        }
        for store in &self.quotas {
            let _ = store.wait_until_ready().await;
        }
        for store in &self.secrets {
            let _ = store.wait_until_ready().await;
        }
    }

    /// What compile reads: every Switchboard object, and the Secrets they reference.
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::default();
        let objects = all(&self.providers)
            .map(Object::Provider)
            .chain(all(&self.routes).map(Object::Route))
            .chain(all(&self.consumers).map(Object::Consumer))
            .chain(all(&self.quotas).map(Object::Quota));
        for object in objects {
            inputs.insert(object);
        }
        // Only referenced Secrets are copied: a namespace may hold many others.
        let wanted = inputs.referenced_secrets();
        for secret in self.secrets.iter().flat_map(Store::state) {
            let key = ObjectKey::new(
                ObjectKind::Secret,
                secret.metadata.namespace.as_deref().unwrap_or_default(),
                secret.metadata.name.as_deref().unwrap_or_default(),
            );
            if wanted.contains(&key) {
                inputs.insert(Object::Secret((*secret).clone()));
            }
        }
        inputs
    }
}

fn all<K: Resource<DynamicType = ()> + Clone + 'static>(
    stores: &[Store<K>],
) -> impl Iterator<Item = K> + '_ {
    stores
        .iter()
        .flat_map(Store::state)
        .map(|object| (*object).clone())
}
