//! Namespaces as tenant boundaries through the operator: objects in three namespaces
//! of the Kubernetes API emulator, a real `switchboard-operator` with a platform
//! namespace, and a proxy in `--operator` mode. Each case once let a team in where it
//! did not belong. Release binaries of both must be built first.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_e2e::cluster::{Cluster, eventually};
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::{TempDir, http_client};

const WITHIN: Duration = Duration::from_secs(10);

fn key_of(namespace: &str) -> String {
    format!("sk-gateway-{namespace}-Zq8Lw2Xc9Rv4Tb7MpK3d")
}

fn provider_key_of(namespace: &str) -> String {
    format!("sk-provider-of-{namespace}")
}

/// A namespace's provider (its own provider key), and consumer `app` with its key.
fn apply_team(cluster: &Cluster, namespace: &str, upstream: &FakeUpstream) {
    let secret = |name: &str, value: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"key": value}
        })
    };
    cluster
        .api
        .apply(secret("provider-key", &provider_key_of(namespace)));
    cluster.api.apply(secret("app-key", &key_of(namespace)));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {
            "type": "openai-compatible",
            "endpoint": upstream.endpoint(),
            "auth": {"secretRef": {"name": "provider-key", "key": "key"}},
            "models": [{"name": "m"}]
        }
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"keys": [{"secretRef": {"name": "app-key", "key": "key"}}]}
    }));
}

fn route(namespace: &str, name: &str, model: &str, extra: Value) -> Value {
    let mut spec = json!({"models": [model], "backends": [{"provider": "llm", "model": "m"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    })
}

async fn chat(proxy: &switchboard_e2e::Proxy, key: &str, model: &str) -> (u16, Value) {
    let response = http_client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn teams_stay_in_their_namespaces_through_the_operator() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    for namespace in ["team-a", "team-b", "platform", "default"] {
        apply_team(&cluster, namespace, &upstream);
    }
    cluster
        .api
        .apply(route("team-a", "chat", "gpt-4o", json!({})));
    // team-b's catch-all header route for the same model, offered to every namespace.
    cluster.api.apply(route(
        "team-b",
        "grabber",
        "gpt-4o",
        json!({
            "headers": [{"name": "content-type", "value": ".*", "type": "RegularExpression"}],
            "allowedConsumers": {"namespaces": {"from": "All"}}
        }),
    ));
    cluster
        .api
        .apply(route("team-b", "own", "b-model", json!({})));
    cluster.api.apply(route(
        "platform",
        "shared",
        "shared-model",
        json!({"allowedConsumers": {"namespaces": {"from": "All"}}}),
    ));
    // A platform route for namespaces with a label only team-a's namespace carries.
    for (namespace, labels) in [
        ("team-a", json!({"switchboard.dev/shared-models": "true"})),
        ("team-b", json!({})),
    ] {
        cluster.api.apply(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels}
        }));
    }
    cluster.api.apply(route(
        "platform",
        "labelled",
        "labelled-model",
        json!({"allowedConsumers": {"namespaces": {
            "from": "Selector",
            "selector": {"matchLabels": {"switchboard.dev/shared-models": "true"}}
        }}}),
    ));
    // team-b's quota with an empty target: it used to throttle every consumer.
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIQuota",
        "metadata": {"name": "b-budget", "namespace": "team-b"},
        "spec": {"target": {}, "limits": [{"metric": "Requests", "max": 0, "window": "Hour"}]}
    }));
    // A consumer with the examples' placeholder key.
    cluster.api.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "placeholder", "namespace": "team-a"},
        "stringData": {"key": "sk-switchboard-REPLACE-WITH-A-LONG-RANDOM-KEY"}
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "copied", "namespace": "team-a"},
        "spec": {"keys": [{"secretRef": {"name": "placeholder", "key": "key"}}]}
    }));
    // A consumer naming a route of a namespace that did not grant it.
    cluster.api.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "reacher-key", "namespace": "default"},
        "stringData": {"key": "sk-reacher-Hy6Nf1Qs8Wd3Ge5JcV2x"}
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "reacher", "namespace": "default"},
        "spec": {
            "keys": [{"secretRef": {"name": "reacher-key", "key": "key"}}],
            "allowedRoutes": [{"namespace": "team-b", "name": "own"}]
        }
    }));

    let operator = cluster
        .operator_with("op-1", &["--platform-namespace", "platform"])
        .await;
    let caches = TempDir::new("tenancy-caches");
    let proxy = cluster
        .proxy("proxy-1", &operator, &caches.path().join("cache.json"))
        .await;
    eventually("the shared route is served", WITHIN, || async {
        (chat(&proxy, &key_of("team-a"), "shared-model").await.0 == 200).then_some(())
    })
    .await;

    // The default namespace's consumer cannot use team-a's route.
    let (status, body) = chat(&proxy, &key_of("default"), "gpt-4o").await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.to_string().contains("team-a"), "{body}");

    // team-a's traffic stays on team-a's provider: team-b's catch-all never captures it.
    let before = upstream.keys().len();
    for _ in 0..3 {
        assert_eq!(chat(&proxy, &key_of("team-a"), "gpt-4o").await.0, 200);
    }
    let keys = upstream.keys();
    assert!(
        keys[before..]
            .iter()
            .all(|k| *k == provider_key_of("team-a")),
        "{:?}",
        &keys[before..]
    );

    // team-b's quota throttles team-b only.
    let (status, body) = chat(&proxy, &key_of("team-b"), "b-model").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("team-b/b-budget"), "{body}");

    // The platform's route is offered to every namespace; the labelled one only to
    // namespaces whose labels (read by the operator) match.
    assert_eq!(
        chat(&proxy, &key_of("team-a"), "labelled-model").await.0,
        200
    );
    assert_eq!(
        chat(&proxy, &key_of("team-b"), "labelled-model").await.0,
        404
    );
    assert_eq!(
        chat(&proxy, &key_of("default"), "shared-model").await.0,
        200
    );

    // The placeholder key is refused, and the status says why.
    let refs = cluster
        .wait_condition(
            ("AIConsumer", "team-a", "copied"),
            "ResolvedRefs",
            "False",
            WITHIN,
        )
        .await;
    assert_eq!(refs["reason"], "PlaceholderKey", "{refs}");
    let (status, _) = chat(
        &proxy,
        "sk-switchboard-REPLACE-WITH-A-LONG-RANDOM-KEY",
        "gpt-4o",
    )
    .await;
    assert_eq!(status, 401);

    // Naming another team's route takes nothing; the status says how to get it.
    let refs = cluster
        .wait_condition(
            ("AIConsumer", "default", "reacher"),
            "ResolvedRefs",
            "False",
            WITHIN,
        )
        .await;
    assert_eq!(refs["reason"], "RefNotPermitted", "{refs}");
    assert!(
        refs["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.allowedConsumers"),
        "{refs}"
    );
    // Both routes for gpt-4o are accepted: different namespaces never conflict.
    for (namespace, name) in [("team-a", "chat"), ("team-b", "grabber")] {
        cluster
            .wait_condition(("AIRoute", namespace, name), "Accepted", "True", WITHIN)
            .await;
    }
}
