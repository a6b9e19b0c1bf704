//! Reflectors over the four Switchboard kinds, the Secrets they reference and the
//! labels of Namespaces: local caches kept current by watches, and a trigger that fires
//! on every change.
//!
//! kube's watcher does the hard parts: it lists, then watches from the list's
//! resourceVersion; when the watch breaks or the version expires (410 Gone) it relists
//! and the store swaps in the complete new state, so nothing is lost across a restart.
//! Errors retry with exponential backoff.
//!
//! Secrets are the exception to "one reflector per kind": a cluster holds far more
//! Secrets than Switchboard reads (service-account tokens, TLS certificates, Helm
//! releases), so the operator never lists them all. It watches each Secret that an
//! AIProvider or AIConsumer references, by name (`fieldSelector=metadata.name=<name>`
//! in its namespace), and starts and stops those watches as the references change.
//! Memory and API traffic then follow the number of referenced Secrets, not the number
//! in the cluster. The cost is one watch per referenced Secret; field selectors have
//! no "name in (a, b)", and a label selector would miss the Secrets users reference
//! without labelling them.
//!
//! The order of work keeps compiles from seeing a reference before its Secret: changes
//! to the four kinds and to Namespaces go to the `follow_references` task, which starts
//! the watches of newly referenced Secrets, waits (bounded) for their first list, and
//! only then fires the compile trigger. Changes to a watched Secret fire it directly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use switchboard_api::compile::{Inputs, Object, ObjectKey, ObjectKind};
use switchboard_api::v1alpha1::{AIConsumer, AIProvider, AIQuota, AIRoute};
use tokio::sync::{Notify, watch as channel};
use tokio::task::{AbortHandle, JoinSet};

use crate::metrics::Metrics;

/// How long a change waits for the first list of a newly referenced Secret before it
/// is compiled anyway (the Secret then counts as missing until its watch catches up,
/// which fires the trigger again).
const SECRET_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// A Namespace's metadata: all the operator reads of it is its labels.
pub type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The caches, one store per kind and watched namespace; Secrets one store per
/// referenced Secret.
#[derive(Clone)]
pub struct Stores {
    pub providers: Vec<Store<AIProvider>>,
    pub routes: Vec<Store<AIRoute>>,
    pub consumers: Vec<Store<AIConsumer>>,
    pub quotas: Vec<Store<AIQuota>>,
    pub secrets: SecretStores,
    /// Namespace metadata (labels), one store for all namespaces or one per watched
    /// namespace.
    pub namespaces: Vec<Store<NamespaceMeta>>,
}

/// The referenced Secrets' caches, by Secret key, maintained by `follow_references`.
#[derive(Clone, Default)]
pub struct SecretStores {
    shared: Arc<SecretsShared>,
}

#[derive(Default)]
struct SecretsShared {
    /// Locked briefly, never across an await.
    stores: Mutex<BTreeMap<ObjectKey, Store<Secret>>>,
    /// True once the references of the first complete lists are being watched.
    synced: channel::Sender<bool>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the Secret store's content.
        f.debug_struct("Stores")
            .field("providers", &count(&self.providers))
            .field("routes", &count(&self.routes))
            .field("consumers", &count(&self.consumers))
            .field("quotas", &count(&self.quotas))
            .field("secrets", &self.secrets)
            .field("namespaces", &count(&self.namespaces))
            .finish()
    }
}

impl Debug for SecretStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: never a Secret's content.
        let stores = self.lock();
        f.debug_struct("SecretStores")
            .field("watched", &stores.len())
            .field("cached", &stores.values().map(Store::len).sum::<usize>())
            .finish()
    }
}

fn count<K: Resource + Clone + 'static>(stores: &[Store<K>]) -> usize
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores.iter().map(Store::len).sum()
}

/// Starts a reflector per kind and namespace (all namespaces when `namespaces` is
/// empty), the Namespace metadata reflector and the task that watches referenced
/// Secrets. Each change ends in `trigger.notify_one()`. The tasks run until `tasks`
/// drops.
pub fn start(
    client: &Client,
    namespaces: &[String],
    trigger: &Arc<Notify>,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) -> Stores {
    // Changes that may change the references, or that must not be compiled before the
    // Secrets they reference are watched.
    let changed = Arc::new(Notify::new());
    let mut watch = Watch {
        client,
        namespaces,
        notify: &changed,
        metrics,
        tasks,
    };
    let stores = Stores {
        providers: watch.kind("AIProvider"),
        routes: watch.kind("AIRoute"),
        consumers: watch.kind("AIConsumer"),
        quotas: watch.kind("AIQuota"),
        secrets: SecretStores::default(),
        namespaces: watch.namespaces(),
    };
    tasks.spawn(follow_references(
        client.clone(),
        stores.clone(),
        changed,
        trigger.clone(),
        metrics.clone(),
    ));
    stores
}

struct Watch<'a> {
    client: &'a Client,
    namespaces: &'a [String],
    notify: &'a Arc<Notify>,
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
                let events = watcher(api, watcher::Config::default());
                reflect(self.tasks, events, self.notify, self.metrics, label)
            })
            .collect()
    }

    /// Namespace labels, metadata only (`Api<PartialObjectMeta<_>>` asks for
    /// `PartialObjectMetadata`, so no spec or status is sent or kept). With watched
    /// namespaces, only those: one watch each, by name, which RBAC can grant with
    /// `resourceNames`.
    fn namespaces(&mut self) -> Vec<Store<NamespaceMeta>> {
        let configs: Vec<watcher::Config> = if self.namespaces.is_empty() {
            vec![watcher::Config::default()]
        } else {
            self.namespaces
                .iter()
                .map(|ns| watcher::Config::default().fields(&format!("metadata.name={ns}")))
                .collect()
        };
        configs
            .into_iter()
            .map(|config| {
                let api: Api<NamespaceMeta> = Api::all(self.client.clone());
                let events = watcher(api, config);
                reflect(self.tasks, events, self.notify, self.metrics, "Namespace")
            })
            .collect()
    }
}

/// Runs a reflector over `events` in a task of `tasks`; every event (and error retry)
/// ends in `notify.notify_one()`. Returns its store.
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    notify: &Arc<Notify>,
    metrics: &Arc<Metrics>,
    label: &'static str,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, events.default_backoff());
    let notify = notify.clone();
    let metrics = metrics.clone();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => notify.notify_one(),
                Err(error) => {
                    metrics.watch_errors.with([label]).inc();
                    tracing::warn!(kind = label, %error, "watch failed; retrying with backoff");
                }
            }
        }
    });
    store
}

/// Keeps one watch per referenced Secret: after each change of the four kinds or of
/// Namespaces, recomputes the references, stops the watches of Secrets no longer
/// referenced, starts those of new ones and waits (bounded) for their first list, then
/// fires `trigger`. Runs until aborted; its watches stop with it.
async fn follow_references(
    client: Client,
    stores: Stores,
    changed: Arc<Notify>,
    trigger: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    // The first references are those of complete lists.
    stores.kinds_ready().await;
    let mut watches = JoinSet::new();
    let mut running: BTreeMap<ObjectKey, AbortHandle> = BTreeMap::new();
    loop {
        let wanted = stores.referenced_secrets();
        let mut started = Vec::new();
        {
            let mut secret_stores = stores.secrets.lock();
            running.retain(|key, task| {
                let keep = wanted.contains(key);
                if !keep {
                    task.abort();
                    secret_stores.remove(key);
                }
                keep
            });
            let new: Vec<ObjectKey> = wanted
                .iter()
                .filter(|key| !running.contains_key(*key))
                .cloned()
                .collect();
            for key in new {
                let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
                let config =
                    watcher::Config::default().fields(&format!("metadata.name={}", key.name));
                let (store, writer) = reflector::store();
                let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
                let (trigger, metrics) = (trigger.clone(), metrics.clone());
                let task = watches.spawn(async move {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(_) => trigger.notify_one(),
                            Err(error) => {
                                metrics.watch_errors.with(["Secret"]).inc();
                                tracing::warn!(kind = "Secret", %error, "watch failed; retrying with backoff");
                            }
                        }
                    }
                });
                running.insert(key.clone(), task);
                secret_stores.insert(key, store.clone());
                started.push(store);
            }
        }
        // Reap the tasks stopped above, so the set stays as large as the references.
        while watches.try_join_next().is_some() {}
        if !started.is_empty() {
            let first_lists = futures_util::future::join_all(
                started.iter().map(|store| store.wait_until_ready()),
            );
            if tokio::time::timeout(SECRET_SYNC_TIMEOUT, first_lists)
                .await
                .is_err()
            {
                tracing::warn!(
                    secrets = started.len(),
                    "referenced Secrets not listed within {SECRET_SYNC_TIMEOUT:?}; compiling without them until they are"
                );
            }
        }
        tracing::debug!(watched = running.len(), "watching referenced Secrets");
        stores.secrets.shared.synced.send_replace(true);
        trigger.notify_one();
        changed.notified().await;
    }
}

// === impl SecretStores ===

impl SecretStores {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<ObjectKey, Store<Secret>>> {
        self.shared
            .stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The Secrets watched now (referenced ones, present or not).
    pub fn watched(&self) -> BTreeSet<ObjectKey> {
        self.lock().keys().cloned().collect()
    }

    /// Every cached Secret.
    fn all(&self) -> Vec<Arc<Secret>> {
        self.lock().values().flat_map(Store::state).collect()
    }

    /// Resolves once the references of the first complete lists are watched.
    async fn synced(&self) {
        let mut synced = self.shared.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }
}

// === impl Stores ===

impl Stores {
    /// Waits until every store has completed its first list, including the Secrets
    /// referenced then.
    ///
    /// `follow_references` alone waits for the four kinds' stores, and this waits for
    /// it: kube's `Store::wait_until_ready` wakes only the last of several tasks waiting
    /// on one store at once (a oneshot receiver keeps one waker), so two waiters could
    /// leave one waiting forever.
    pub async fn ready(&self) {
        self.secrets.synced().await;
        for store in &self.namespaces {
            let _ = store.wait_until_ready().await;
        }
    }

    /// Waits for the first lists of the four kinds (`follow_references` only).
    async fn kinds_ready(&self) {
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
    }

    /// The Secrets the cached objects reference.
    fn referenced_secrets(&self) -> BTreeSet<ObjectKey> {
        let objects = all(&self.providers)
            .map(Object::Provider)
            .chain(all(&self.consumers).map(Object::Consumer));
        Inputs::from_objects(objects).referenced_secrets()
    }

    /// What compile reads: every Switchboard object, the Secrets they reference and
    /// the labels of the namespaces.
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
        // Only referenced Secrets are cached; a watch whose reference just went away
        // may still hold one until `follow_references` stops it.
        let wanted = inputs.referenced_secrets();
        for secret in self.secrets.all() {
            let key = ObjectKey::new(
                ObjectKind::Secret,
                secret.metadata.namespace.as_deref().unwrap_or_default(),
                secret.metadata.name.as_deref().unwrap_or_default(),
            );
            if wanted.contains(&key) {
                inputs.insert(Object::Secret((*secret).clone()));
            }
        }
        for namespace in self.namespaces.iter().flat_map(Store::state) {
            if let Some(name) = &namespace.metadata.name {
                let labels = namespace.metadata.labels.clone().unwrap_or_default();
                inputs.namespaces.insert(name.clone(), labels);
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
