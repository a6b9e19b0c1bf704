//! `KubeEmulator`: an in-process imitation of the Kubernetes API server, **a test
//! fixture only, not a Kubernetes implementation**. It stores JSON objects behind a real
//! HTTP/1.1 server on `127.0.0.1` (plain HTTP, no auth) so that kube-rs clients
//! (`Api`, `watcher`, reflectors, the event `Recorder`) and the `kubectl` binary can talk
//! to it in tests, without a cluster.
//!
//! Served resources: core `v1` namespaces, secrets, configmaps and events,
//! `events.k8s.io/v1` events, `coordination.k8s.io/v1` leases, and every served version
//! of each CustomResourceDefinition in `<workspace>/crds/*.yaml`.
//!
//! What it simplifies, compared with a real API server:
//! - No schema validation, defaulting, pruning, CEL rules, admission, RBAC or auth; any
//!   JSON object is accepted as long as its kind, name and namespace are consistent.
//!   Names must be DNS subdomains (422 otherwise).
//! - Namespaces need not exist to be used; deleting one deletes nothing else.
//! - No version conversion: an object is stored as written and served with the
//!   requested `apiVersion`. Core `v1` events and `events.k8s.io/v1` events are kept
//!   apart (the real server stores them together).
//! - Strategic merge patches are applied as JSON merge patches (`$patch` and other
//!   `$`-directives are dropped), so lists are replaced, never merged by key.
//! - Server-side apply (`application/apply-patch+yaml`) is a merge patch that creates
//!   missing objects: no managedFields, no field ownership, no conflicts, and fields
//!   left out of a later apply are kept rather than removed. `fieldManager` is required.
//! - `generation` starts at 1 and is bumped when anything outside `metadata` and
//!   `status` changes, for every kind. `managedFields` is never written.
//! - Lists ignore `limit` and never return `continue`; `resourceVersion` on a list is
//!   ignored (lists are always current). Label selectors support `k=v`, `k==v`, `k!=v`,
//!   `k` and `!k` (no set-based `in`/`notin`); field selectors only `metadata.name` and
//!   `metadata.namespace`.
//! - Watches: `resourceVersion` "" or "0" starts from now (no synthetic ADDED events);
//!   a newer one replays from a bounded history (10,000 events); an older one than the
//!   history gets one `ERROR` 410 `Expired` event. `sendInitialEvents=true` is supported.
//!   Selectors apply to the new state only (an object leaving a selector is not sent as
//!   DELETED). Bookmarks come every second when `allowWatchBookmarks` is set.
//! - Objects with finalizers are marked with `deletionTimestamp` on delete and removed
//!   when the last finalizer goes; there is no garbage collection of owned objects.
//! - Tables (`kubectl get`) use Name plus the CRD's `additionalPrinterColumns` (Name and
//!   Age for built-in kinds); JSONPath supports `.a.b`, `[N]`, `[*]` and
//!   `[?(@.x=="y")]`.
//! - OpenAPI: `/openapi/v3` serves only PATCH operations that declare the
//!   `fieldValidation` parameter (no schemas), which is what `kubectl apply` checks to
//!   leave validation to the server; `fieldValidation` is then ignored, so unknown
//!   fields are accepted. `/openapi/v2` answers 404. Plain `kubectl apply` works;
//!   `--validate=false` is not needed.
//! - `dryRun` is refused (400); DeleteOptions (preconditions, propagation, grace
//!   periods) are ignored; there is no `deletecollection`.
//! - HTTP/1.1 only, JSON only (no protobuf, no aggregated discovery: the legacy
//!   discovery documents are served, and clients fall back to them).
//! - Metadata-only requests (`Accept: application/json;as=PartialObjectMetadata[List]`,
//!   as kube's `Api<PartialObjectMeta<K>>` sends) get `PartialObjectMetadata` objects:
//!   `metadata` only, from get, list and watch.
//! - Namespaces get the label `kubernetes.io/metadata.name: <name>` on every write, as
//!   the real server does.
//!
//! For tests of what a client reads, `bytes_served` counts the response bytes of gets,
//! lists and watch events per resource, and `requests` records every request.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Reply = Result<Response<Body>, ApiError>;

/// Watch events kept so that a watch can resume from an older resourceVersion.
const HISTORY_LIMIT: usize = 10_000;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Verbs every resource supports (no `deletecollection`).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

// === Types ===

/// A running emulated API server; dropping it stops the server and every connection.
pub struct KubeEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// One HTTP request the emulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    pub content_type: Option<String>,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
}

/// What the server task and the handle share.
#[derive(Debug)]
struct Shared {
    resources: Vec<ResourceDef>,
    state: Mutex<State>,
    /// Per (group, plural): response bytes of gets, lists and watch events, and
    /// watches open now.
    served: BTreeMap<(String, String), Arc<Counters>>,
}

/// Traffic of one resource.
#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    open_watches: AtomicU64,
}

/// Counts a watch as open while it lives.
#[derive(Debug)]
struct OpenWatch(Arc<Counters>);

impl OpenWatch {
    fn new(counters: Arc<Counters>) -> Self {
        counters.open_watches.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything mutable; only ever locked briefly, never across an await.
#[derive(Debug)]
struct State {
    objects: BTreeMap<ObjectKey, Value>,
    /// The global resourceVersion counter: the last one handed out.
    resource_version: u64,
    history: VecDeque<Arc<WatchEvent>>,
    /// The history holds every event after this resourceVersion.
    history_floor: u64,
    events: broadcast::Sender<Broadcast>,
    unavailable: bool,
    requests: Vec<RequestRecord>,
    /// Source of uids and generated names.
    counter: u64,
}

/// One served (group, version, plural).
#[derive(Debug, Clone)]
struct ResourceDef {
    group: String,
    version: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    status: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    /// The CRD's `additionalPrinterColumns`, as written.
    columns: Vec<Value>,
}

/// Where an object is stored: versions of one resource share storage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    group: String,
    plural: String,
    /// `""` for cluster-scoped objects.
    namespace: String,
    name: String,
}

/// A stored change, for watches.
#[derive(Debug)]
struct WatchEvent {
    resource_version: u64,
    kind: &'static str,
    key: ObjectKey,
    object: Value,
}

/// What open watches receive.
#[derive(Debug, Clone)]
enum Broadcast {
    Event(Arc<WatchEvent>),
    /// Close every open watch (`expire_watches`, `set_unavailable`).
    CloseAll,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The main resource: `.status` is kept as stored when the kind has a status
    /// subresource.
    Main,
    /// The `/status` subresource: only `.status` changes.
    Status,
    /// `KubeEmulator::apply`: everything, without a resourceVersion precondition.
    Whole,
}

/// An error, answered as a Kubernetes `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

/// A request, read whole (bodies are small).
#[derive(Debug)]
struct ApiRequest {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    accept: String,
    body: Bytes,
}

/// Which objects a list or watch selects.
#[derive(Debug)]
struct Filter {
    group: String,
    plural: String,
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// One term of a label or field selector.
#[derive(Debug)]
struct Requirement {
    key: String,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    NotEquals,
    Exists,
    NotExists,
}

/// The state of one open watch response.
#[derive(Debug)]
struct WatchStream {
    res: ResourceDef,
    /// `PartialObjectMetadata` instead of whole objects.
    meta_only: bool,
    /// The resource's counters; open while this lives.
    open: OpenWatch,
    filter: Filter,
    events: broadcast::Receiver<Broadcast>,
    /// Lines to send before live events (replayed history or initial events).
    pending: VecDeque<Bytes>,
    bookmarks: Option<Interval>,
    deadline: Option<Instant>,
    /// The newest resourceVersion this watch has seen, for bookmarks.
    last_rv: u64,
}

// === impl KubeEmulator ===

impl KubeEmulator {
    /// Starts a server on `127.0.0.1:0` serving the built-in kinds and the CRDs in
    /// `<workspace>/crds`.
    pub async fn start() -> KubeEmulator {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        Self::start_with_crds(&crds).await
    }

    /// As `start`, with the CRDs in `dir` (every `*.yaml` file, multi-document allowed).
    pub async fn start_with_crds(dir: &Path) -> KubeEmulator {
        let mut resources = builtin_resources();
        resources.extend(load_crds(dir));
        let (events, _) = broadcast::channel(4096);
        let served = resources
            .iter()
            .map(|r| ((r.group.clone(), r.plural.clone()), Arc::default()))
            .collect();
        let shared = Arc::new(Shared {
            served,
            resources,
            state: Mutex::new(State {
                objects: BTreeMap::new(),
                // Never "0": on a watch that means "from now", and a client holding
                // the resourceVersion of an empty list would miss the first objects.
                resource_version: 1,
                history: VecDeque::new(),
                history_floor: 1,
                events,
                unavailable: false,
                requests: Vec::new(),
                counter: 0,
            }),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the kube emulator");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        KubeEmulator {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig with cluster, user and context `emulator` (namespace
    /// `default`, no credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let config = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: emulator
  cluster:
    server: {}
users:
- name: emulator
  user: {{}}
contexts:
- name: emulator
  context:
    cluster: emulator
    user: emulator
    namespace: default
current-context: emulator
",
            self.url()
        );
        std::fs::write(path, config)
    }

    /// A kube-rs client config for this server (default namespace `default`), to
    /// adjust before building a client; `kube_client` uses it as is.
    pub fn kube_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("the emulator URL is a valid URI"))
    }

    /// A kube-rs client for this server. Like any kube-rs client it retries 429, 503
    /// and 504 (15 times, paced by `Retry-After`, which the emulator sets to 1 s); set
    /// `default_retry = false` on `kube_config()` to see a 503 at once.
    pub fn kube_client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("build a kube client")
    }

    /// Creates or replaces `object` as `kubectl apply` would, without a resourceVersion
    /// check. It must carry apiVersion, kind and name; the namespace defaults to
    /// `default`. A `status` in it is written too; without one the stored status is
    /// kept. Watches see the change. Panics on an unknown kind or an invalid object.
    pub fn apply(&self, object: Value) {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let res = self.resource(api_version, object["kind"].as_str().unwrap_or_default());
        let mut state = self.shared.lock();
        let result = state
            .admit(res, None, None, object)
            .and_then(|(key, object)| match state.objects.get(&key).cloned() {
                Some(old) => state.replace(res, key, old, object, Part::Whole),
                None => Ok(state.insert_new(res, key, object, Part::Whole)),
            });
        if let Err(error) = result {
            panic!("KubeEmulator::apply: {}", error.message);
        }
    }

    /// The stored object, as the API would return it. `None` as the namespace means
    /// `default` (it is ignored for cluster-scoped kinds).
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = self.resource(api_version, kind);
        let key = res.key(namespace.unwrap_or("default"), name);
        let state = self.shared.lock();
        state.objects.get(&key).map(|object| res.present(object))
    }

    /// Every stored object of a kind, in all namespaces, sorted by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let res = self.resource(api_version, kind);
        let state = self.shared.lock();
        state
            .objects
            .iter()
            .filter(|(key, _)| key.group == res.group && key.plural == res.plural)
            .map(|(_, object)| res.present(object))
            .collect()
    }

    /// Deletes an object as an API DELETE would (one with finalizers is only marked for
    /// deletion); false if there was none. Namespaces as in `get`.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let res = self.resource(api_version, kind);
        let key = res.key(namespace.unwrap_or("default"), name);
        self.shared.lock().delete(res, key).is_ok()
    }

    /// Closes every open watch and forgets the event history, so that a watch resuming
    /// from any resourceVersion handed out so far gets a 410 `Expired` and its client
    /// has to list again.
    pub fn expire_watches(&self) {
        let mut state = self.shared.lock();
        state.history.clear();
        // Bump the counter so that even the newest resourceVersion a client holds is
        // now older than the history.
        state.resource_version += 1;
        state.history_floor = state.resource_version;
        let _ = state.events.send(Broadcast::CloseAll);
    }

    /// While true, every request gets a 503 and open watches are closed.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut state = self.shared.lock();
        state.unavailable = unavailable;
        if unavailable {
            let _ = state.events.send(Broadcast::CloseAll);
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Bytes of objects of this kind served so far in all versions: get and list
    /// response bodies, and watch event lines.
    pub fn bytes_served(&self, api_version: &str, kind: &str) -> u64 {
        let res = self.resource(api_version, kind);
        self.shared.counters(res).bytes.load(Ordering::Relaxed)
    }

    /// Watches of this kind open now (in all versions): a client's watch counts until
    /// its response ends or the client goes away.
    pub fn open_watches(&self, api_version: &str, kind: &str) -> u64 {
        let res = self.resource(api_version, kind);
        self.shared
            .counters(res)
            .open_watches
            .load(Ordering::Relaxed)
    }

    /// The resource serving `kind` in `api_version`; panics if there is none, since
    /// that is a mistake in the test.
    fn resource(&self, api_version: &str, kind: &str) -> &ResourceDef {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.shared
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .unwrap_or_else(|| panic!("the kube emulator serves no {kind} in {api_version:?}"))
    }
}

impl fmt::Debug for KubeEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeEmulator")
            .field("addr", &self.addr)
            .field("resources", &self.shared.resources.len())
            .finish_non_exhaustive()
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

// === impl RequestRecord ===

impl RequestRecord {
    /// The decoded value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether this was a watch request.
    pub fn is_watch(&self) -> bool {
        matches!(self.query_param("watch").as_deref(), Some("true" | "1"))
    }
}

// === Server ===

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    // No timer, so no header read timeout: clients keep idle pooled
                    // connections as long as they like.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let record = RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        content_type: header(CONTENT_TYPE),
        accept: header(ACCEPT),
    };
    {
        let mut state = shared.lock();
        state.requests.push(record.clone());
        if state.unavailable {
            let error = ApiError::new(
                503,
                "ServiceUnavailable",
                "the emulated API server is unavailable",
            );
            let mut response = error.response();
            // As the real server does; it paces kube-rs's built-in retries.
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return Ok(response);
        }
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return Ok(ApiError::bad_request(format!("cannot read the body: {error}")).response());
        }
    };
    let request = ApiRequest {
        method: parts.method,
        query: url::form_urlencoded::parse(record.query.as_bytes())
            .into_owned()
            .collect(),
        path: record.path,
        content_type: record.content_type.unwrap_or_default(),
        accept: record.accept.unwrap_or_default(),
        body,
    };
    Ok(shared
        .route(&request)
        .unwrap_or_else(|error| error.response()))
}

// === impl Shared ===

impl Shared {
    /// Locks the state, shrugging off poisoning: a panicking test thread must not take
    /// every later request down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn route(&self, req: &ApiRequest) -> Reply {
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method == Method::GET;
        match segments.as_slice() {
            ["version"] if get => reply(200, version_info()),
            ["healthz" | "livez" | "readyz"] if get => reply(200, json!("ok")),
            ["api"] if get => reply(200, json!({"kind": "APIVersions", "versions": ["v1"]})),
            ["apis"] if get => reply(200, self.group_list()),
            ["openapi", "v3"] if get => reply(200, self.openapi_root()),
            ["openapi", "v3", "api", "v1"] if get => self.openapi_group_version("", "v1"),
            ["openapi", "v3", "apis", group, version] if get => {
                self.openapi_group_version(group, version)
            }
            ["api", "v1"] if get => self.resource_list("", "v1"),
            ["apis", group, version] if get => self.resource_list(group, version),
            ["api", "v1", rest @ ..] => self.resource_request(req, "", "v1", rest),
            ["apis", group, version, rest @ ..] => self.resource_request(req, group, version, rest),
            _ => Err(ApiError::no_route()),
        }
    }

    fn group_list(&self) -> Value {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for res in self.resources.iter().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == res.group) {
                Some((_, versions)) if !versions.contains(&res.version.as_str()) => {
                    versions.push(&res.version)
                }
                Some(_) => {}
                None => groups.push((&res.group, vec![&res.version])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .into_iter()
                    .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect();
                json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    fn resource_list(&self, group: &str, version: &str) -> Reply {
        let resources: Vec<Value> = self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(ResourceDef::discovery)
            .collect();
        if resources.is_empty() {
            return Err(ApiError::no_route());
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        reply(
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        )
    }

    /// The OpenAPI v3 index: one document per group version.
    fn openapi_root(&self) -> Value {
        let mut paths = Map::new();
        for res in &self.resources {
            let key = res.api_prefix();
            let url = format!("/openapi/v3/{key}?hash=emulator");
            paths.insert(
                key.trim_start_matches('/').to_string(),
                json!({"serverRelativeURL": url}),
            );
        }
        json!({"paths": paths})
    }

    /// Just enough OpenAPI for kubectl: each kind's PATCH operation declares the
    /// `fieldValidation` parameter, so kubectl leaves validation to the server (which
    /// skips it) instead of downloading schemas. No schemas are served.
    fn openapi_group_version(&self, group: &str, version: &str) -> Reply {
        let mut paths = Map::new();
        for res in self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
        {
            let namespace = if res.namespaced {
                "/namespaces/{namespace}"
            } else {
                ""
            };
            let path = format!("/{}{namespace}/{}/{{name}}", res.api_prefix(), res.plural);
            let gvk = json!({"group": res.group, "version": res.version, "kind": res.kind});
            let parameters = json!([
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            ]);
            let patch = json!({"x-kubernetes-group-version-kind": gvk, "parameters": parameters, "responses": {}});
            paths.insert(path, json!({"patch": patch}));
        }
        if paths.is_empty() {
            return Err(ApiError::no_route());
        }
        let info =
            json!({"title": "Kubernetes API emulator", "version": version_info()["gitVersion"]});
        reply(
            200,
            json!({"openapi": "3.0.0", "info": info, "paths": paths}),
        )
    }

    /// `.../{plural}`, `.../namespaces/{ns}/{plural}[/{name}[/status]]`.
    fn resource_request(
        &self,
        req: &ApiRequest,
        group: &str,
        version: &str,
        rest: &[&str],
    ) -> Reply {
        // `namespaces/x/status` is the Namespace x itself, not a collection in it.
        let (namespace, rest) = match rest {
            ["namespaces", ns, tail @ ..]
                if !tail.is_empty() && !matches!(tail[0], "status" | "finalize") =>
            {
                (Some(*ns), tail)
            }
            _ => (None, rest),
        };
        let (plural, name, status) = match rest {
            [plural] => (*plural, None, false),
            [plural, name] => (*plural, Some(*name), false),
            [plural, name, "status"] => (*plural, Some(*name), true),
            _ => return Err(ApiError::no_route()),
        };
        let res = self
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .ok_or_else(ApiError::no_route)?;
        if status && !res.status {
            return Err(ApiError::no_route());
        }
        // A namespaced kind is reachable without a namespace only to list or watch it
        // across all namespaces.
        let all_namespaces = res.namespaced && namespace.is_none();
        if namespace.is_some() && !res.namespaced
            || all_namespaces && (name.is_some() || req.method != Method::GET)
        {
            return Err(ApiError::no_route());
        }
        if req.param("dryRun").is_some() {
            // Refused rather than ignored: ignoring it would write for real.
            return Err(ApiError::bad_request(
                "dryRun is not supported by the emulator",
            ));
        }
        let ns = namespace.unwrap_or_default();
        match (&req.method, name) {
            (&Method::GET, None) if matches!(req.param("watch"), Some("true" | "1")) => {
                self.watch(req, res, namespace)
            }
            (&Method::GET, None) => self.list(req, res, namespace),
            (&Method::POST, None) => {
                let object = parse_json(&req.body)?;
                let created = self.lock().create(res, namespace, None, object)?;
                reply(201, res.present(&created))
            }
            (&Method::GET, Some(name)) => {
                let object = self
                    .lock()
                    .objects
                    .get(&res.key(ns, name))
                    .map(|o| res.present(o));
                let object = object.ok_or_else(|| ApiError::object_not_found(res, name))?;
                let body = if wants_table(&req.accept) {
                    table(res, std::slice::from_ref(&object), None)
                } else if wants_metadata(&req.accept) {
                    partial(&object)
                } else {
                    object
                };
                Ok(self.served_response(res, &body))
            }
            (&Method::PUT, Some(name)) => {
                let object = parse_json(&req.body)?;
                let part = if status { Part::Status } else { Part::Main };
                let mut state = self.lock();
                let (key, object) = state.admit(res, namespace, Some(name), object)?;
                let old = state.objects.get(&key).cloned();
                let old = old.ok_or_else(|| ApiError::object_not_found(res, name))?;
                let updated = state.replace(res, key, old, object, part)?;
                reply(200, res.present(&updated))
            }
            (&Method::PATCH, Some(name)) => self.patch(req, res, ns, name, status),
            (&Method::DELETE, Some(name)) if !status => {
                let deleted = self.lock().delete(res, res.key(ns, name))?;
                reply(200, res.present(&deleted))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource: {}",
                    req.method
                ),
            )),
        }
    }

    fn list(&self, req: &ApiRequest, res: &ResourceDef, namespace: Option<&str>) -> Reply {
        let filter = Filter::new(req, res, namespace)?;
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(key, object)| filter.matches(key, object))
            .map(|(_, object)| res.present(object))
            .collect();
        let resource_version = state.resource_version.to_string();
        drop(state);
        let body = if wants_table(&req.accept) {
            table(res, &items, Some(&resource_version))
        } else if wants_metadata(&req.accept) {
            json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": resource_version},
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            })
        } else {
            json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": resource_version},
                "items": items,
            })
        };
        Ok(self.served_response(res, &body))
    }

    fn counters(&self, res: &ResourceDef) -> Arc<Counters> {
        self.served
            .get(&(res.group.clone(), res.plural.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// A 200 with `body`, counted in `bytes_served`.
    fn served_response(&self, res: &ResourceDef, body: &Value) -> Response<Body> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.counters(res)
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        body_response(200, Full::new(Bytes::from(bytes)).boxed_unsync())
    }

    fn patch(
        &self,
        req: &ApiRequest,
        res: &ResourceDef,
        namespace: &str,
        name: &str,
        status: bool,
    ) -> Reply {
        let content_type = req
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let apply = content_type == "application/apply-patch+yaml";
        if apply && req.param("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PATCH requests with application/apply-patch+yaml must specify a fieldManager",
            ));
        }
        let url_ns = res.namespaced.then_some(namespace);
        let part = if status { Part::Status } else { Part::Main };
        let mut state = self.lock();
        let key = res.key(namespace, name);
        let Some(old) = state.objects.get(&key).cloned() else {
            if apply && !status {
                // Server-side apply creates what does not exist yet.
                let object = apply_patch(&json!({}), content_type, &req.body)?;
                let created = state.create(res, url_ns, Some(name), object)?;
                return reply(201, res.present(&created));
            }
            return Err(ApiError::object_not_found(res, name));
        };
        let patched = apply_patch(&old, content_type, &req.body)?;
        let (key, patched) = state.admit(res, url_ns, Some(name), patched)?;
        let updated = state.replace(res, key, old, patched, part)?;
        reply(200, res.present(&updated))
    }

    fn watch(&self, req: &ApiRequest, res: &ResourceDef, namespace: Option<&str>) -> Reply {
        let filter = Filter::new(req, res, namespace)?;
        let meta_only = wants_metadata(&req.accept);
        let present = |object: &Value| {
            let object = res.present(object);
            if meta_only { partial(&object) } else { object }
        };
        let flag = |name| matches!(req.param(name), Some("true" | "1"));
        let timeout = match req.param("timeoutSeconds") {
            Some(seconds) => {
                let seconds: u64 = seconds
                    .parse()
                    .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?;
                // An absurdly large timeout is no timeout.
                Instant::now().checked_add(Duration::from_secs(seconds))
            }
            None => None,
        };
        let state = self.lock();
        let mut pending = VecDeque::new();
        if flag("sendInitialEvents") {
            for (key, object) in &state.objects {
                if filter.matches(key, object) {
                    pending.push_back(watch_line("ADDED", &present(object)));
                }
            }
            let end = json!({"k8s.io/initial-events-end": "true"});
            pending.push_back(watch_line(
                "BOOKMARK",
                &res.bookmark(state.resource_version, Some(end)),
            ));
        } else {
            match req.param("resourceVersion").unwrap_or_default() {
                "" | "0" => {}
                since => {
                    let since: u64 = since.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {since:?}"))
                    })?;
                    if since < state.history_floor {
                        let expired = ApiError::new(
                            410,
                            "Expired",
                            format!(
                                "too old resource version: {since} ({})",
                                state.history_floor
                            ),
                        );
                        let line = watch_line("ERROR", &expired.status());
                        return Ok(body_response(200, Full::new(line).boxed_unsync()));
                    }
                    for event in &state.history {
                        if event.resource_version > since
                            && filter.matches(&event.key, &event.object)
                        {
                            pending.push_back(watch_line(event.kind, &present(&event.object)));
                        }
                    }
                }
            }
        }
        // Subscribing under the same lock as the replay: no event is lost or doubled.
        let events = state.events.subscribe();
        let last_rv = state.resource_version;
        drop(state);
        let bookmarks = flag("allowWatchBookmarks").then(|| {
            let mut interval =
                tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let watch = WatchStream {
            res: res.clone(),
            meta_only,
            open: OpenWatch::new(self.counters(res)),
            filter,
            events,
            pending,
            bookmarks,
            deadline: timeout,
            last_rv,
        };
        let lines = futures_util::stream::unfold(watch, |mut watch| async move {
            let line = watch.next_line().await?;
            watch
                .open
                .0
                .bytes
                .fetch_add(line.len() as u64, Ordering::Relaxed);
            Some((Ok::<_, Infallible>(Frame::data(line)), watch))
        });
        Ok(body_response(200, StreamBody::new(lines).boxed_unsync()))
    }
}

// === impl State ===

impl State {
    /// Checks and normalizes an incoming object: kind and apiVersion, name (from the
    /// body, the URL or `generateName`), namespace, and Secret `stringData`.
    fn admit(
        &mut self,
        res: &ResourceDef,
        url_ns: Option<&str>,
        url_name: Option<&str>,
        mut object: Value,
    ) -> Result<(ObjectKey, Value), ApiError> {
        let Value::Object(fields) = &mut object else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        if let Some(kind) = fields.get("kind").filter(|k| **k != json!(res.kind)) {
            return Err(ApiError::bad_request(format!(
                "kind {kind} does not match {}",
                res.kind
            )));
        }
        if let Some(api_version) = fields.get("apiVersion").and_then(Value::as_str) {
            let group = api_version.split_once('/').map_or("", |(g, _)| g);
            if group != res.group {
                return Err(ApiError::bad_request(format!(
                    "apiVersion {api_version} does not match {}",
                    res.api_version()
                )));
            }
        }
        fields.insert("apiVersion".into(), json!(res.api_version()));
        fields.insert("kind".into(), json!(res.kind));
        if res.group.is_empty() && res.kind == "Secret" {
            merge_string_data(fields)?;
        }
        let Value::Object(meta) = fields.entry("metadata").or_insert_with(|| json!({})) else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        let name = match (meta.get("name").and_then(Value::as_str), url_name) {
            (Some(body), Some(url)) if body != url => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body}) does not match the name on the URL ({url})"
                )));
            }
            (Some(name), _) | (None, Some(name)) => name.to_string(),
            (None, None) => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => {
                    self.counter += 1;
                    format!("{prefix}{:05x}", self.counter % 0x10_0000)
                }
                None => {
                    return Err(ApiError::invalid(
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            )));
        }
        meta.insert("name".into(), json!(name));
        if res.group.is_empty() && res.kind == "Namespace" {
            // As the real server: every namespace carries its name as a label.
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                return Err(ApiError::bad_request("metadata.labels must be an object"));
            }
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        let namespace = if res.namespaced {
            let namespace = match (meta.get("namespace").and_then(Value::as_str), url_ns) {
                (Some(body), Some(url)) if body != url => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(ns), _) | (None, Some(ns)) => ns.to_string(),
                (None, None) => "default".to_string(),
            };
            meta.insert("namespace".into(), json!(namespace));
            namespace
        } else {
            meta.remove("namespace");
            String::new()
        };
        Ok((res.key(&namespace, &name), object))
    }

    fn create(
        &mut self,
        res: &ResourceDef,
        url_ns: Option<&str>,
        url_name: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        let (key, object) = self.admit(res, url_ns, url_name, object)?;
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", res.qualified(), key.name),
            ));
        }
        Ok(self.insert_new(res, key, object, Part::Main))
    }

    /// Stores a new object with fresh server-managed metadata.
    fn insert_new(
        &mut self,
        res: &ResourceDef,
        key: ObjectKey,
        mut object: Value,
        part: Part,
    ) -> Value {
        if res.status && part != Part::Whole {
            // As the real server: status is ignored on create when it is a subresource.
            remove_field(&mut object, "status");
        }
        self.counter += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.counter);
        let meta = metadata_mut(&mut object);
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        self.commit("ADDED", key, object)
    }

    /// Writes `new` over `old`: resourceVersion precondition, status subresource rules,
    /// server-managed metadata, generation; a write that changes nothing is a no-op.
    fn replace(
        &mut self,
        res: &ResourceDef,
        key: ObjectKey,
        old: Value,
        new: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let expected = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if part != Part::Whole
            && expected.is_some_and(|rv| {
                Some(rv)
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            })
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your \
                     changes to the latest version and try again",
                    res.qualified(),
                    key.name
                ),
            ));
        }
        let mut object = match part {
            Part::Status => {
                let mut object = old.clone();
                copy_field(&new, &mut object, "status");
                object
            }
            // `apply` without a status keeps the stored one, as `kubectl apply` would.
            Part::Main | Part::Whole
                if res.status && (part == Part::Main || new.get("status").is_none()) =>
            {
                let mut object = new;
                copy_field(&old, &mut object, "status");
                object
            }
            Part::Main | Part::Whole => new,
        };
        let old_meta = old.get("metadata").cloned().unwrap_or_default();
        let meta = metadata_mut(&mut object);
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "resourceVersion",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        if spec_of(&object) != spec_of(&old) {
            let generation = old_meta["generation"].as_i64().unwrap_or(0) + 1;
            metadata_mut(&mut object).insert("generation".into(), json!(generation));
        }
        if object == old {
            return Ok(old);
        }
        let terminating = object.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array);
        if terminating && finalizers.is_none_or(Vec::is_empty) {
            return Ok(self.commit("DELETED", key, object));
        }
        Ok(self.commit("MODIFIED", key, object))
    }

    fn delete(&mut self, res: &ResourceDef, key: ObjectKey) -> Result<Value, ApiError> {
        let Some(mut object) = self.objects.get(&key).cloned() else {
            return Err(ApiError::object_not_found(res, &key.name));
        };
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array);
        if finalizers.is_some_and(|f| !f.is_empty()) {
            // Finalizers hold the object until whoever owns them removes them.
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(object);
            }
            metadata_mut(&mut object).insert("deletionTimestamp".into(), json!(now_rfc3339()));
            return Ok(self.commit("MODIFIED", key, object));
        }
        Ok(self.commit("DELETED", key, object))
    }

    /// Assigns the next resourceVersion, stores (or removes) the object and tells the
    /// watches.
    fn commit(&mut self, kind: &'static str, key: ObjectKey, mut object: Value) -> Value {
        self.resource_version += 1;
        let resource_version = self.resource_version;
        metadata_mut(&mut object).insert(
            "resourceVersion".into(),
            json!(resource_version.to_string()),
        );
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        let event = Arc::new(WatchEvent {
            resource_version,
            kind,
            key,
            object: object.clone(),
        });
        self.history.push_back(Arc::clone(&event));
        if self.history.len() > HISTORY_LIMIT
            && let Some(dropped) = self.history.pop_front()
        {
            self.history_floor = dropped.resource_version;
        }
        // An error only means that nobody is watching.
        let _ = self.events.send(Broadcast::Event(event));
        object
    }
}

// === impl ResourceDef ===

impl ResourceDef {
    fn builtin(
        group: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
        short: &[&str],
    ) -> Self {
        ResourceDef {
            group: group.to_string(),
            version: "v1".to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            namespaced,
            status,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            columns: Vec::new(),
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `api/v1` or `apis/{group}/{version}`.
    fn api_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }

    /// `airoutes.switchboard.dev`, as error messages name a resource.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn key(&self, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
            namespace: if self.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    /// A stored object as served in this version.
    fn present(&self, object: &Value) -> Value {
        let mut object = object.clone();
        if let Value::Object(fields) = &mut object {
            fields.insert("apiVersion".into(), json!(self.api_version()));
        }
        object
    }

    fn bookmark(&self, resource_version: u64, annotations: Option<Value>) -> Value {
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        json!({"kind": self.kind, "apiVersion": self.api_version(), "metadata": metadata})
    }

    /// Its entries in an APIResourceList.
    fn discovery(&self) -> Vec<Value> {
        let mut entries = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": VERBS,
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if self.status {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

fn builtin_resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::builtin("", "namespaces", "Namespace", false, true, &["ns"]),
        ResourceDef::builtin("", "secrets", "Secret", true, false, &[]),
        ResourceDef::builtin("", "configmaps", "ConfigMap", true, false, &["cm"]),
        ResourceDef::builtin("", "events", "Event", true, false, &["ev"]),
        ResourceDef::builtin("events.k8s.io", "events", "Event", true, false, &["ev"]),
        ResourceDef::builtin("coordination.k8s.io", "leases", "Lease", true, false, &[]),
    ]
}

/// Every served version of every CustomResourceDefinition in `dir/*.yaml`. Panics on
/// an unreadable file: the CRDs are part of the repository.
fn load_crds(dir: &Path) -> Vec<ResourceDef> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read CRDs in {}: {e}", dir.display()));
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    let mut resources = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let document =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if document["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let (spec, names) = (&document["spec"], &document["spec"]["names"]);
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let texts = |v: &Value| v.as_array().into_iter().flatten().map(text).collect();
            let versions = spec["versions"].as_array().into_iter().flatten();
            for version in versions.filter(|v| v["served"] == true) {
                resources.push(ResourceDef {
                    group: text(&spec["group"]),
                    version: text(&version["name"]),
                    plural: text(&names["plural"]),
                    singular: text(&names["singular"]),
                    kind: text(&names["kind"]),
                    namespaced: spec["scope"] == "Namespaced",
                    status: version.pointer("/subresources/status").is_some(),
                    short_names: texts(&names["shortNames"]),
                    categories: texts(&names["categories"]),
                    columns: version["additionalPrinterColumns"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                });
            }
        }
    }
    resources
}

// === impl ApiError ===

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }

    fn no_route() -> Self {
        Self::not_found("the server could not find the requested resource")
    }

    fn object_not_found(res: &ResourceDef, name: &str) -> Self {
        Self::not_found(format!("{} {name:?} not found", res.qualified()))
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }

    fn response(&self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

// === impl Filter ===

impl Filter {
    fn new(req: &ApiRequest, res: &ResourceDef, namespace: Option<&str>) -> Result<Self, ApiError> {
        let fields = parse_selector(req.param("fieldSelector").unwrap_or_default())?;
        if let Some(term) = fields.iter().find(|r| {
            !matches!(r.key.as_str(), "metadata.name" | "metadata.namespace")
                || matches!(r.op, Op::Exists | Op::NotExists)
        }) {
            return Err(ApiError::bad_request(format!(
                "field selector {:?} is not supported: only metadata.name and metadata.namespace",
                term.key
            )));
        }
        Ok(Filter {
            group: res.group.clone(),
            plural: res.plural.clone(),
            namespace: namespace.map(str::to_string),
            labels: parse_selector(req.param("labelSelector").unwrap_or_default())?,
            fields,
        })
    }

    fn matches(&self, key: &ObjectKey, object: &Value) -> bool {
        let label = |name: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(name))
                .and_then(Value::as_str)
        };
        let field = |name: &str| {
            Some(if name == "metadata.name" {
                key.name.as_str()
            } else {
                key.namespace.as_str()
            })
        };
        key.group == self.group
            && key.plural == self.plural
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == key.namespace)
            && self.labels.iter().all(|r| r.matches(label(&r.key)))
            && self.fields.iter().all(|r| r.matches(field(&r.key)))
    }
}

/// Parses `a=b,c!=d,e,!f`; set-based terms are refused.
fn parse_selector(text: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut requirements = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains(['(', ' ']) {
            return Err(ApiError::bad_request(format!(
                "selector {term:?} is not supported by the emulator"
            )));
        }
        let (key, op, value) = if let Some((k, v)) = term.split_once("!=") {
            (k, Op::NotEquals, v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, Op::Equals, v)
        } else if let Some(k) = term.strip_prefix('!') {
            (k, Op::NotExists, "")
        } else {
            (term, Op::Exists, "")
        };
        requirements.push(Requirement {
            key: key.to_string(),
            op,
            value: value.to_string(),
        });
    }
    Ok(requirements)
}

impl Requirement {
    fn matches(&self, actual: Option<&str>) -> bool {
        match self.op {
            Op::Equals => actual == Some(self.value.as_str()),
            Op::NotEquals => actual != Some(self.value.as_str()),
            Op::Exists => actual.is_some(),
            Op::NotExists => actual.is_none(),
        }
    }
}

// === impl WatchStream ===

impl WatchStream {
    /// The next line to send, or None to end the response.
    async fn next_line(&mut self) -> Option<Bytes> {
        enum Wake {
            Message(Result<Broadcast, broadcast::error::RecvError>),
            Bookmark,
            Deadline,
        }
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            let wake = tokio::select! {
                biased;
                message = self.events.recv() => Wake::Message(message),
                () = tick(self.bookmarks.as_mut()) => Wake::Bookmark,
                () = sleep_until(self.deadline) => Wake::Deadline,
            };
            match wake {
                Wake::Message(Ok(Broadcast::Event(event))) => {
                    self.last_rv = event.resource_version;
                    if self.filter.matches(&event.key, &event.object) {
                        let object = self.res.present(&event.object);
                        let object = if self.meta_only {
                            partial(&object)
                        } else {
                            object
                        };
                        return Some(watch_line(event.kind, &object));
                    }
                }
                Wake::Bookmark => {
                    return Some(watch_line(
                        "BOOKMARK",
                        &self.res.bookmark(self.last_rv, None),
                    ));
                }
                // A watch that fell behind is closed too: its client resumes from the
                // last resourceVersion it saw, which the history still has.
                Wake::Message(Ok(Broadcast::CloseAll) | Err(_)) | Wake::Deadline => return None,
            }
        }
    }
}

/// The next tick of `interval`; never without one.
async fn tick(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

// === Tables ===

/// Whether the client asked for `PartialObjectMetadata` (or a list of them) first.
fn wants_metadata(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=PartialObjectMetadata"))
}

/// An object as `PartialObjectMetadata`: its metadata only.
fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Whether the client asked for a `meta.k8s.io` Table (as `kubectl get` does).
fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// A Table with Name, then the printer columns (Age when there are none).
fn table(res: &ResourceDef, items: &[Value], resource_version: Option<&str>) -> Value {
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    let columns = if res.columns.is_empty() {
        vec![age]
    } else {
        res.columns.clone()
    };
    let mut definitions = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    // A printer column is a column definition plus its jsonPath.
    definitions.extend(columns.iter().map(|column| {
        let mut definition = column.clone();
        remove_field(&mut definition, "jsonPath");
        definition
    }));
    let now = Timestamp::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|object| {
            let mut cells = vec![
                object
                    .pointer("/metadata/name")
                    .cloned()
                    .unwrap_or_default(),
            ];
            cells.extend(columns.iter().map(|column| cell(object, column, now)));
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

fn cell(object: &Value, column: &Value, now: Timestamp) -> Value {
    let found = json_path(object, column["jsonPath"].as_str().unwrap_or_default());
    let value = match found.as_slice() {
        [] => return Value::Null,
        [one] => (*one).clone(),
        many => json!(many.iter().map(|v| plain(v)).collect::<Vec<_>>().join(",")),
    };
    match column["type"].as_str().unwrap_or_default() {
        "date" => value
            .as_str()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .map_or(Value::Null, |then| {
                json!(human_age(now.as_second() - then.as_second()))
            }),
        "integer" | "number" | "boolean" => value,
        _ => json!(plain(&value)),
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Like Kubernetes' short durations: `45s`, `12m`, `5h`, `3d`.
fn human_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Evaluates the JSONPath subset CRD printer columns use: `.a.b`, `[N]`, `[*]` and
/// `[?(@.x.y=="v")]`.
fn json_path<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![root];
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else {
                return Vec::new();
            };
            let selector = &after[..end];
            rest = &after[end + 1..];
            current = current
                .into_iter()
                .flat_map(|value| select(value, selector))
                .collect();
        } else {
            let after = rest.strip_prefix('.').unwrap_or(rest);
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            rest = &after[end..];
            if !field.is_empty() {
                current = current
                    .into_iter()
                    .filter_map(|value| value.get(field))
                    .collect();
            }
        }
    }
    current
}

fn select<'a>(value: &'a Value, selector: &str) -> Vec<&'a Value> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(fields) if selector == "*" => fields.values().collect(),
        _ => return Vec::new(),
    };
    if selector == "*" {
        return items;
    }
    if let Ok(index) = selector.parse::<usize>() {
        return items.get(index).copied().into_iter().collect();
    }
    let Some((lhs, rhs)) = selector
        .strip_prefix("?(")
        .and_then(|f| f.strip_suffix(')'))
        .and_then(|f| f.split_once("=="))
    else {
        return Vec::new();
    };
    let path = lhs.trim().trim_start_matches('@');
    let literal = rhs.trim().trim_matches(['"', '\'']);
    items
        .into_iter()
        .filter(|item| json_path(item, path).iter().any(|v| plain(v) == literal))
        .collect()
}

// === Helpers ===

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-switchboard-emulator",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn reply(code: u16, value: Value) -> Reply {
    Ok(json_response(code, &value))
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    body_response(code, Full::new(Bytes::from(bytes)).boxed_unsync())
}

fn body_response(code: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Applies a PATCH body of `content_type` to `old`.
fn apply_patch(old: &Value, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let mut object = old.clone();
    match content_type {
        "application/merge-patch+json" => merge_patch(&mut object, &parse_json(body)?),
        "application/strategic-merge-patch+json" => {
            let mut patch = parse_json(body)?;
            strip_directives(&mut patch);
            merge_patch(&mut object, &patch);
        }
        "application/apply-patch+yaml" => {
            // YAML is a superset of JSON, so this reads both.
            let patch: Value = serde_yaml_ng::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the body is not valid YAML or JSON: {e}"))
            })?;
            merge_patch(&mut object, &patch);
        }
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the body is not a valid JSON patch: {e}"))
            })?;
            json_patch::patch(&mut object, &patch)
                .map_err(|e| ApiError::invalid(format!("the JSON patch does not apply: {e}")))?;
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the patch content type {other:?} is not supported"),
            ));
        }
    }
    Ok(object)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(fields) = target {
        for (key, value) in patch {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Drops strategic-merge-patch directives (`$patch`, `$setElementOrder/...`, ...).
fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|key, _| !key.starts_with('$'));
            fields.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Folds a Secret's `stringData` into base64 `data`, as the real server does on write.
fn merge_string_data(fields: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(string_data) = fields.remove("stringData") else {
        return Ok(());
    };
    let Value::Object(string_data) = string_data else {
        return Err(ApiError::bad_request("stringData must be an object"));
    };
    let data = fields.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        return Err(ApiError::bad_request("data must be an object"));
    }
    for (key, value) in string_data {
        let Value::String(text) = value else {
            return Err(ApiError::bad_request(format!(
                "stringData.{key} must be a string"
            )));
        };
        data[key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    Ok(())
}

/// The object's `metadata`, made an object if it is not one.
fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    match &mut object["metadata"] {
        Value::Object(meta) => meta,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn remove_field(object: &mut Value, field: &str) {
    if let Value::Object(fields) = object {
        fields.remove(field);
    }
}

/// Sets `to[field]` to `from[field]`, or removes it when `from` has none.
fn copy_field(from: &Value, to: &mut Value, field: &str) {
    match (from.get(field), to) {
        (Some(value), Value::Object(fields)) => {
            fields.insert(field.into(), value.clone());
        }
        (None, to) => remove_field(to, field),
        _ => {}
    }
}

/// Everything generation tracks: the object without metadata and status.
fn spec_of(object: &Value) -> Value {
    let mut object = object.clone();
    for field in ["metadata", "status", "apiVersion", "kind"] {
        remove_field(&mut object, field);
    }
    object
}

fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name
            .split('.')
            .all(|label| label.starts_with(alnum) && label.ends_with(alnum))
}

fn now_rfc3339() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl ApiRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}
