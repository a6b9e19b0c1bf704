//! The operator's caches against the Kubernetes API emulator, in process: which
//! Secrets and Namespaces the watches read, what they keep, and what they hand to
//! compile. (The process-level memory test is in `secret_memory.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_api::compile::{ObjectKey, ObjectKind};
use switchboard_e2e::cluster::eventually;
use switchboard_e2e::kube_emulator::{KubeEmulator, RequestRecord};
use switchboard_operator::metrics::Metrics;
use switchboard_operator::watch::{self, Stores};
use tokio::sync::Notify;
use tokio::task::JoinSet;

const NS: &str = "team-a";
const WITHIN: Duration = Duration::from_secs(10);

/// The operator's watches, running in this test's runtime until dropped.
struct Watching {
    stores: Stores,
    trigger: Arc<Notify>,
    _tasks: JoinSet<()>,
}

async fn start(api: &KubeEmulator, namespaces: &[&str]) -> Watching {
    let client = api.kube_client();
    let metrics = Arc::new(Metrics::new().unwrap());
    let trigger = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let namespaces: Vec<String> = namespaces.iter().map(ToString::to_string).collect();
    let stores = watch::start(&client, &namespaces, &trigger, &metrics, &mut tasks);
    tokio::time::timeout(WITHIN, stores.ready())
        .await
        .expect("the caches sync");
    Watching {
        stores,
        trigger,
        _tasks: tasks,
    }
}

impl Watching {
    /// Consumes a trigger already fired, so the next wait sees only new changes.
    async fn drain(&self) {
        // `timeout` polls the future once before looking at the clock.
        let _ = tokio::time::timeout(Duration::ZERO, self.trigger.notified()).await;
    }
}

fn secret(namespace: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"key": value}
    })
}

fn provider(secret: Option<&str>) -> Value {
    let mut spec = json!({
        "type": "openai-compatible",
        "endpoint": "http://127.0.0.1:9/v1",
        "models": [{"name": "m"}]
    });
    if let Some(secret) = secret {
        spec["auth"] = json!({"secretRef": {"name": secret, "key": "key"}});
    }
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": "p", "namespace": NS},
        "spec": spec
    })
}

fn consumer(secrets: &[&str]) -> Value {
    let keys: Vec<Value> = secrets
        .iter()
        .map(|s| json!({"secretRef": {"name": s, "key": "key"}}))
        .collect();
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"keys": keys}
    })
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
    names
        .iter()
        .map(|name| ObjectKey::new(ObjectKind::Secret, NS, name))
        .collect()
}

/// The value of `data.key` of each Secret compile would read.
fn secret_values(stores: &Stores) -> BTreeMap<String, String> {
    stores
        .inputs()
        .secrets
        .values()
        .map(|secret| {
            let value = secret
                .data
                .as_ref()
                .and_then(|d| d.get("key"))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default();
            (secret.metadata.name.clone().unwrap_or_default(), value)
        })
        .collect()
}

/// Requests for a resource collection: `path` ends with `/{plural}`.
fn collection_requests(api: &KubeEmulator, plural: &str) -> Vec<RequestRecord> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{plural}")))
        .collect()
}

#[tokio::test]
async fn only_referenced_secrets_are_read_and_the_watches_follow_the_references() {
    let api = KubeEmulator::start().await;
    let filler = "x".repeat(2048);
    for i in 0..50 {
        api.apply(secret(NS, &format!("unrelated-{i}"), &filler));
        api.apply(secret("elsewhere", &format!("unrelated-{i}"), &filler));
    }
    // Same name as a referenced Secret, in another namespace: not the one referenced.
    api.apply(secret("elsewhere", "gateway-key", "sk-not-this-one-0000"));
    api.apply(secret(NS, "provider-key", "sk-provider-one-0000"));
    api.apply(secret(NS, "gateway-key", "sk-gateway-one-00000"));
    api.apply(provider(Some("provider-key")));
    api.apply(consumer(&["gateway-key"]));

    let watching = start(&api, &[]).await;
    let stores = &watching.stores;
    assert_eq!(
        stores.secrets.watched(),
        keys(&["provider-key", "gateway-key"])
    );
    assert_eq!(
        secret_values(stores),
        BTreeMap::from([
            ("gateway-key".into(), "sk-gateway-one-00000".into()),
            ("provider-key".into(), "sk-provider-one-0000".into()),
        ])
    );
    // Every Secret request names one referenced Secret in its namespace.
    let requests = collection_requests(&api, "secrets");
    assert!(!requests.is_empty());
    for request in &requests {
        let selector = request.query_param("fieldSelector").unwrap_or_default();
        assert!(
            request
                .path
                .starts_with(&format!("/api/v1/namespaces/{NS}/"))
                && ["metadata.name=provider-key", "metadata.name=gateway-key"]
                    .contains(&selector.as_str()),
            "a Secret request beyond the referenced ones: {request:?}"
        );
    }
    // Two small Secrets' worth, not 100 of 2 KiB each.
    let served = api.bytes_served("v1", "Secret");
    assert!(served < 16 * 1024, "{served} bytes of Secrets served");
    eventually("one watch per referenced Secret", WITHIN, || async {
        (api.open_watches("v1", "Secret") == 2).then_some(())
    })
    .await;
    // Nothing of a Secret's content in the caches' Debug output.
    let printed = format!("{stores:?}");
    assert!(!printed.contains("sk-gateway"), "{printed}");

    // A new reference, to a Secret that does not exist yet: watched at once, read when
    // it appears.
    api.apply(consumer(&["gateway-key", "gateway-key-2"]));
    eventually("the new reference watched", WITHIN, || async {
        (stores.secrets.watched() == keys(&["provider-key", "gateway-key", "gateway-key-2"]))
            .then_some(())
    })
    .await;
    assert!(!secret_values(stores).contains_key("gateway-key-2"));
    api.apply(secret(NS, "gateway-key-2", "sk-gateway-two-00000"));
    eventually("the new Secret read", WITHIN, || async {
        (secret_values(stores)
            .get("gateway-key-2")
            .map(String::as_str)
            == Some("sk-gateway-two-00000"))
        .then_some(())
    })
    .await;

    // A rotated Secret fires the compile trigger and reaches the inputs.
    watching.drain().await;
    api.apply(secret(NS, "provider-key", "sk-provider-two-0000"));
    tokio::time::timeout(WITHIN, watching.trigger.notified())
        .await
        .expect("the rotation fires the trigger");
    eventually("the rotated value", WITHIN, || async {
        (secret_values(stores)
            .get("provider-key")
            .map(String::as_str)
            == Some("sk-provider-two-0000"))
        .then_some(())
    })
    .await;

    // References dropped: their watches stop and their Secrets leave the caches.
    api.apply(provider(None));
    api.apply(consumer(&["gateway-key-2"]));
    eventually("only the remaining reference watched", WITHIN, || async {
        (stores.secrets.watched() == keys(&["gateway-key-2"])
            && api.open_watches("v1", "Secret") == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        secret_values(stores).into_keys().collect::<Vec<_>>(),
        ["gateway-key-2"]
    );
    assert!(
        format!("{stores:?}").contains("SecretStores { watched: 1, cached: 1 }"),
        "{stores:?}"
    );
}

#[tokio::test]
async fn namespace_labels_reach_the_inputs_from_metadata_only_watches() {
    let api = KubeEmulator::start().await;
    api.apply(namespace(NS, json!({"tenant": "a"})));
    api.apply(namespace("team-b", json!({"tenant": "b", "tier": "gold"})));
    api.apply(namespace("kube-system", json!({})));

    let watching = start(&api, &[]).await;
    let stores = &watching.stores;
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        stores.inputs().namespaces,
        BTreeMap::from([
            (
                "kube-system".to_string(),
                labels(&[("kubernetes.io/metadata.name", "kube-system")])
            ),
            (
                NS.to_string(),
                labels(&[("kubernetes.io/metadata.name", NS), ("tenant", "a")])
            ),
            (
                "team-b".to_string(),
                labels(&[
                    ("kubernetes.io/metadata.name", "team-b"),
                    ("tenant", "b"),
                    ("tier", "gold")
                ])
            ),
        ])
    );
    // Metadata only: no spec or status of a Namespace is asked for.
    let requests = collection_requests(&api, "namespaces");
    assert!(!requests.is_empty());
    for request in &requests {
        let accept = request.accept.as_deref().unwrap_or_default();
        assert!(
            accept.starts_with("application/json;as=PartialObjectMetadata"),
            "{request:?}"
        );
    }

    // A label change fires the trigger and reaches the inputs; so does a deletion.
    watching.drain().await;
    api.apply(namespace(
        "team-b",
        json!({"tenant": "b", "tier": "silver"}),
    ));
    tokio::time::timeout(WITHIN, watching.trigger.notified())
        .await
        .expect("a label change fires the trigger");
    eventually("the new label", WITHIN, || async {
        (stores.inputs().namespaces["team-b"]
            .get("tier")
            .map(String::as_str)
            == Some("silver"))
        .then_some(())
    })
    .await;
    assert!(api.delete("v1", "Namespace", None, "kube-system"));
    eventually("the deleted namespace gone", WITHIN, || async {
        (!stores.inputs().namespaces.contains_key("kube-system")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_watched_namespaces_only_their_labels_are_read() {
    let api = KubeEmulator::start().await;
    api.apply(namespace(NS, json!({"tenant": "a"})));
    api.apply(namespace("team-b", json!({"tenant": "b"})));
    api.apply(namespace("team-c", json!({"tenant": "c"})));

    let watching = start(&api, &[NS, "team-c"]).await;
    let names: Vec<String> = watching.stores.inputs().namespaces.into_keys().collect();
    assert_eq!(names, [NS, "team-c"]);
    // One watch per watched namespace, by name: what RBAC `resourceNames` can grant.
    for request in collection_requests(&api, "namespaces") {
        let selector = request.query_param("fieldSelector").unwrap_or_default();
        assert!(
            ["metadata.name=team-a", "metadata.name=team-c"].contains(&selector.as_str()),
            "{request:?}"
        );
    }
    let bytes = api.bytes_served("v1", "Namespace");
    assert!(
        bytes > 0 && bytes < 4096,
        "{bytes} bytes of Namespaces served"
    );
}
