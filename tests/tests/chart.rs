//! The Helm chart's RBAC against what the operator does: the operator runs against the
//! Kubernetes API emulator through a scenario that makes every kind of call it has
//! (watching, status writes, Events new and repeated, quota usage, election, takeover
//! and release, proxy reports), and the calls recorded by the emulator must be exactly
//! those the chart's rules allow: none denied, no rule unused. `helm` renders the
//! chart (scripts/test.sh puts it on PATH); release binaries must be built first.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_e2e::cluster::{Cluster, eventually};
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::redis::RedisServer;
use switchboard_e2e::{TempDir, workspace_root};

const NS: &str = "team-a";

/// One permission: API group, resource (with `/subresource`), verb.
type Permission = (String, String, String);

/// The chart's objects, rendered with `values`.
fn render(values: &[&str]) -> Vec<Value> {
    let chart = workspace_root().join("charts/switchboard");
    let mut command = Command::new("helm");
    command
        .args(["template", "sb"])
        .arg(&chart)
        .args(["-n", "switchboard"]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command
        .output()
        .expect("helm on PATH (scripts/install-kube-tools.sh)");
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&rendered)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect()
}

/// The rules of the chart's ClusterRoles and Roles, rendered with `values`.
fn chart_permissions(values: &[&str]) -> BTreeSet<Permission> {
    let mut permissions = BTreeSet::new();
    for object in render(values) {
        if !matches!(object["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in object["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        permissions.insert((
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    permissions
}

/// The permission an API request needs; `None` for discovery (allowed to everyone).
fn permission(method: &str, path: &str, query: &str) -> Option<Permission> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    // Namespaced or not, then resource, name, subresource.
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [] => return None,
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

fn route(name: &str, provider: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"models": [name], "backends": [{"provider": provider, "model": "fake-model"}]}
    })
}

async fn wait_condition(cluster: &Cluster, kind: &str, name: &str, type_: &str, status: &str) {
    cluster
        .wait_condition((kind, NS, name), type_, status, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn the_operator_uses_every_rule_of_the_charts_rbac_and_no_other() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    for (name, value) in [
        ("provider-key", "sk-rbac-provider-key-0001"),
        ("gateway-key", "sk-rbac-gateway-key-0001"),
    ] {
        cluster.api.apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "stringData": {"key": value}
        }));
    }
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": "fake", "namespace": NS},
        "spec": {
            "type": "openai-compatible",
            "endpoint": upstream.endpoint(),
            "auth": {"secretRef": {"name": "provider-key", "key": "key"}},
            "models": [{"name": "fake-model"}]
        }
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"keys": [{"secretRef": {"name": "gateway-key", "key": "key"}}]}
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIQuota",
        "metadata": {"name": "budget", "namespace": NS},
        "spec": {"limits": [{"metric": "Requests", "max": 10, "window": "Hour"}]}
    }));
    cluster.api.apply(route("chat", "fake"));

    // Two replicas (election, reports), with Redis (quota usage in status).
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--quota-status-interval",
        "200ms",
    ];
    let first = cluster.operator_with("operator-a", &args).await;
    let second = cluster.operator_with("operator-b", &args).await;
    let caches = TempDir::new("rbac-caches");
    let _proxy = cluster
        .proxy("proxy-a", &first, &caches.path().join("a.json"))
        .await;
    wait_condition(&cluster, "AIRoute", "chat", "Programmed", "True").await;
    wait_condition(&cluster, "AIConsumer", "app", "Accepted", "True").await;
    wait_condition(&cluster, "AIProvider", "fake", "Accepted", "True").await;
    wait_condition(&cluster, "AIQuota", "budget", "Programmed", "True").await;

    // A broken reference: a Warning Event; fixed, then broken again: the same Event
    // again, which the recorder patches as a series.
    for provider in ["missing", "fake", "missing"] {
        cluster.api.apply(route("flaky", provider));
        let status = if provider == "fake" { "True" } else { "False" };
        wait_condition(&cluster, "AIRoute", "flaky", "ResolvedRefs", status).await;
    }
    eventually("the repeated Event", Duration::from_secs(10), || async {
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.contains("/events/"))
            .then_some(())
    })
    .await;

    // The leader stops with SIGTERM (gives the Lease up, removes its report); the other
    // replica takes over.
    let (mut leader, follower) = if first.is_leader().await {
        (first, second)
    } else {
        (second, first)
    };
    leader.process.sigterm();
    assert!(
        leader
            .process
            .wait_exit(Duration::from_secs(10))
            .await
            .is_some()
    );
    eventually("a new leader", Duration::from_secs(20), || async {
        follower.is_leader().await.then_some(())
    })
    .await;

    let used: BTreeSet<Permission> = cluster
        .api
        .requests()
        .iter()
        .filter_map(|r| permission(&r.method, &r.path, &r.query))
        .collect();
    for values in [&[][..], &["watchNamespaces={team-a}"][..]] {
        let allowed = chart_permissions(values);
        let denied: Vec<&Permission> = used.difference(&allowed).collect();
        assert!(
            denied.is_empty(),
            "the operator makes calls the chart ({values:?}) does not allow: {denied:?}"
        );
        let unused: Vec<&Permission> = allowed.difference(&used).collect();
        assert!(
            unused.is_empty(),
            "the chart ({values:?}) allows calls the operator never makes: {unused:?}"
        );
    }
}

/// Namespaces are cluster-scoped: a Role in a watched namespace cannot grant them, so
/// with watchNamespaces a ClusterRole grants exactly those by name (the operator
/// watches each with `fieldSelector=metadata.name=...`, which `resourceNames`
/// authorizes), and no rule grants every namespace.
#[test]
fn namespace_access_is_limited_to_the_watched_namespaces() {
    let namespace_rules = |values: &[&str]| -> Vec<Value> {
        render(values)
            .into_iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .filter(|rule| {
                rule["resources"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("namespaces")))
            })
            .collect()
    };
    let all = namespace_rules(&[]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["verbs"], json!(["list", "watch"]));
    assert!(all[0].get("resourceNames").is_none(), "{all:?}");

    let scoped = namespace_rules(&["watchNamespaces={team-a,team-b}"]);
    assert_eq!(scoped.len(), 1, "{scoped:?}");
    assert_eq!(scoped[0]["verbs"], json!(["list", "watch"]));
    assert_eq!(scoped[0]["resourceNames"], json!(["team-a", "team-b"]));
}

#[test]
fn requests_map_to_the_permissions_they_need() {
    let p = |m, path, q| permission(m, path, q);
    let perm = |g: &str, r: &str, v: &str| Some((g.to_string(), r.to_string(), v.to_string()));
    assert_eq!(
        p("GET", "/api/v1/secrets", "watch=true&resourceVersion=1"),
        perm("", "secrets", "watch")
    );
    assert_eq!(
        p("GET", "/api/v1/namespaces/a/secrets", ""),
        perm("", "secrets", "list")
    );
    assert_eq!(
        p(
            "PATCH",
            "/apis/switchboard.dev/v1alpha1/namespaces/a/airoutes/r/status",
            ""
        ),
        perm("switchboard.dev", "airoutes/status", "patch")
    );
    assert_eq!(
        p(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
            ""
        ),
        perm("coordination.k8s.io", "leases", "update")
    );
    assert_eq!(
        p(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
            ""
        ),
        perm("coordination.k8s.io", "leases", "get")
    );
    assert_eq!(p("GET", "/apis/switchboard.dev/v1alpha1", ""), None);
    assert_eq!(p("GET", "/version", ""), None);
}
