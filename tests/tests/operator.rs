//! The operator end to end: the Kubernetes API emulator (a test fixture), real
//! `switchboard-operator` processes, three proxies in `--operator` mode and a fake
//! provider, all on loopback. Release binaries of both must be built first.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_e2e::cluster::{Cluster, Operator, eventually};
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::redis::RedisServer;
use switchboard_e2e::{Proxy, TempDir, http_client};

const NS: &str = "team-a";
const GATEWAY_KEY: &str = "sk-gateway-key-for-team-a";
const PROVIDER_KEY: &str = "sk-provider-key-one";

// === objects ===

fn secret(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"key": value}
    })
}

fn provider(upstream: &FakeUpstream) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": "fake", "namespace": NS},
        "spec": {
            "type": "openai-compatible",
            "endpoint": upstream.endpoint(),
            "auth": {"secretRef": {"name": "provider-key", "key": "key"}},
            "models": [{"name": "fake-model"}]
        }
    })
}

fn route(name: &str, model: &str, provider: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"models": [model], "backends": [{"provider": provider, "model": "fake-model"}]}
    })
}

fn consumer() -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"keys": [{"secretRef": {"name": "gateway-key", "key": "key"}}]}
    })
}

/// A provider, its key, a consumer and its key: everything but routes.
fn apply_base(cluster: &Cluster, upstream: &FakeUpstream) {
    cluster.api.apply(secret("provider-key", PROVIDER_KEY));
    cluster.api.apply(secret("gateway-key", GATEWAY_KEY));
    cluster.api.apply(provider(upstream));
    cluster.api.apply(consumer());
}

// === helpers ===

async fn chat_status(proxy: &Proxy, model: &str) -> u16 {
    http_client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(GATEWAY_KEY)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The condition `type_` of an object in `NS`.
fn condition(cluster: &Cluster, kind: &str, name: &str, type_: &str) -> Option<Value> {
    cluster.condition(kind, NS, name, type_)
}

async fn wait_condition(
    cluster: &Cluster,
    kind: &str,
    name: &str,
    type_: &str,
    status: &str,
    within: Duration,
) -> Value {
    cluster
        .wait_condition((kind, NS, name), type_, status, within)
        .await
}

/// Three proxies against `operator`, each with its own cache file under `caches`.
async fn three_proxies(cluster: &Cluster, operator: &Operator, caches: &TempDir) -> Vec<Proxy> {
    let mut proxies = Vec::new();
    for i in 1..=3 {
        let cache = caches.path().join(format!("proxy-{i}.json"));
        proxies.push(cluster.proxy(&format!("proxy-{i}"), operator, &cache).await);
    }
    proxies
}

// === scenarios ===

#[tokio::test]
async fn an_applied_route_reaches_every_proxy_within_a_second_and_becomes_programmed() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_base(&cluster, &upstream);
    let operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("caches");
    let proxies = three_proxies(&cluster, &operator, &caches).await;
    for proxy in &proxies {
        assert_eq!(chat_status(proxy, "chat").await, 404, "no route yet");
    }

    let applied = Instant::now();
    cluster.api.apply(route("chat", "chat", "fake"));
    for proxy in &proxies {
        eventually(
            "the route on every proxy",
            Duration::from_secs(1)
                .saturating_sub(applied.elapsed())
                .max(Duration::from_millis(1)),
            || async { (chat_status(proxy, "chat").await == 200).then_some(()) },
        )
        .await;
    }
    let took = applied.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        upstream.keys().last().map(String::as_str),
        Some(PROVIDER_KEY)
    );

    // Statuses: accepted, resolved, and programmed on all three proxies.
    wait_condition(
        &cluster,
        "AIRoute",
        "chat",
        "Accepted",
        "True",
        Duration::from_secs(5),
    )
    .await;
    let programmed = wait_condition(
        &cluster,
        "AIRoute",
        "chat",
        "Programmed",
        "True",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        programmed["message"].as_str().unwrap().contains("all 3"),
        "{programmed}"
    );
    let route = cluster
        .api
        .get("switchboard.dev/v1alpha1", "AIRoute", Some(NS), "chat")
        .unwrap();
    assert_eq!(
        route["status"]["observedGeneration"],
        route["metadata"]["generation"]
    );

    // The operator lists the proxies and their versions, and never the token.
    let debug = operator.admin_text("/debug/proxies").await;
    let parsed: Value = serde_json::from_str(&debug).unwrap();
    let connected = parsed["connected"].as_array().unwrap();
    assert_eq!(connected.len(), 3, "{debug}");
    let versions: std::collections::BTreeSet<&str> = connected
        .iter()
        .map(|p| p["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions.len(), 1, "{debug}");
    let metrics = operator.admin_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_operator_connected_proxies 3"),
        "{metrics}"
    );
    let config = operator.admin_text("/debug/config").await;
    for text in [&debug, &metrics, &config, &operator.process.logs()] {
        assert!(!text.contains(&cluster.pki.token()), "the token leaked");
        assert!(
            !text.contains(PROVIDER_KEY) && !text.contains(GATEWAY_KEY),
            "a key leaked"
        );
    }
}

#[tokio::test]
async fn a_rotated_secret_is_used_and_a_broken_reference_keeps_the_old_config_serving() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_base(&cluster, &upstream);
    cluster.api.apply(route("chat", "chat", "fake"));
    let operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("caches");
    let proxies = three_proxies(&cluster, &operator, &caches).await;
    for proxy in &proxies {
        assert_eq!(chat_status(proxy, "chat").await, 200);
    }

    // Rotate the provider key: every proxy uses the new one upstream.
    cluster
        .api
        .apply(secret("provider-key", "sk-provider-key-two"));
    for proxy in &proxies {
        eventually(
            "the rotated key upstream",
            Duration::from_secs(3),
            || async {
                let status = chat_status(proxy, "chat").await;
                (status == 200
                    && upstream.keys().last().map(String::as_str) == Some("sk-provider-key-two"))
                .then_some(())
            },
        )
        .await;
    }

    // Break the reference: the provider says why, an Event is published, and the
    // proxies keep serving the route with the last good key.
    let mut broken = provider(&upstream);
    broken["spec"]["auth"]["secretRef"]["name"] = "no-such-secret".into();
    cluster.api.apply(broken);
    let accepted = wait_condition(
        &cluster,
        "AIProvider",
        "fake",
        "Accepted",
        "False",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(accepted["reason"], "SecretNotFound");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("no-such-secret"),
        "{accepted}"
    );
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("last accepted version"),
        "{accepted}"
    );
    let event = eventually("a SecretNotFound Event", Duration::from_secs(5), || async {
        cluster
            .api
            .list("events.k8s.io/v1", "Event")
            .into_iter()
            .find(|e| e["reason"] == "SecretNotFound" && e["regarding"]["name"] == "fake")
    })
    .await;
    assert_eq!(event["type"], "Warning");
    for proxy in &proxies {
        assert_eq!(
            chat_status(proxy, "chat").await,
            200,
            "the old config keeps serving"
        );
    }
    assert_eq!(
        upstream.keys().last().map(String::as_str),
        Some("sk-provider-key-two")
    );

    // Fixing it takes effect and clears the condition.
    cluster.api.apply(provider(&upstream));
    wait_condition(
        &cluster,
        "AIProvider",
        "fake",
        "Accepted",
        "True",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn proxies_serve_without_the_operator_and_restart_from_their_last_good_snapshot() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_base(&cluster, &upstream);
    cluster.api.apply(route("chat", "chat", "fake"));
    let mut operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("caches");
    let mut proxies = three_proxies(&cluster, &operator, &caches).await;
    let url = operator.config_url();

    // The cache holds the Snapshot, readable by its owner only.
    // (Written just after the swap that made the proxy ready, so wait for it.)
    let cache = caches.path().join("proxy-1.json");
    let metadata = eventually("the cache file", Duration::from_secs(5), || async {
        std::fs::metadata(&cache).ok()
    })
    .await;
    let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
    assert_eq!(mode & 0o777, 0o600);
    for i in 2..=3 {
        let other = caches.path().join(format!("proxy-{i}.json"));
        eventually("every cache file", Duration::from_secs(5), || async {
            other.exists().then_some(())
        })
        .await;
    }

    operator.process.kill();
    for proxy in &proxies {
        assert_eq!(
            chat_status(proxy, "chat").await,
            200,
            "serving with the operator gone"
        );
    }

    // Restart a proxy while the operator is down: it boots from its cache.
    drop(proxies.remove(0));
    let restarted = cluster.proxy_to("proxy-1", &url, &cache).await;
    assert_eq!(chat_status(&restarted, "chat").await, 200);
    restarted
        .wait_for_log_line(0, &["last good config from disk"], Duration::from_secs(5))
        .await;

    // A proxy with no cache and no operator is not ready (and says why).
    let fresh = caches.path().join("fresh.json");
    let args = cluster.proxy_args("proxy-4", &url, &fresh);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let unready = Proxy::spawn_args(&args, &[]).await;
    let status = eventually("the proxy to listen", Duration::from_secs(10), || async {
        let response = http_client()
            .get(unready.url("/readyz"))
            .send()
            .await
            .ok()?;
        Some(response.status())
    })
    .await;
    assert_eq!(status, 503);
    unready
        .wait_for_log_line(0, &["no config from the operator"], Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_new_leader_takes_over_status_writing_within_the_lease_duration() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_base(&cluster, &upstream);
    let first = cluster.operator("operator-a").await;
    let second = cluster.operator("operator-b").await;
    let (mut leader, follower) = eventually("a leader", Duration::from_secs(10), || async {
        match (first.is_leader().await, second.is_leader().await) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        }
    })
    .await;
    let mut operators = [Some(first), Some(second)];
    // Both replicas serve the same config version.
    let v0 = operators[0]
        .as_ref()
        .unwrap()
        .admin_json("/debug/config")
        .await["version"]
        .clone();
    let v1 = operators[1]
        .as_ref()
        .unwrap()
        .admin_json("/debug/config")
        .await["version"]
        .clone();
    assert_eq!(v0, v1);

    // One proxy per replica: the leader counts both (through the replicas' reports)
    // before it calls a route Programmed.
    let caches = TempDir::new("caches");
    let _proxies = [
        cluster
            .proxy(
                "proxy-a",
                operators[0].as_ref().unwrap(),
                &caches.path().join("a.json"),
            )
            .await,
        cluster
            .proxy(
                "proxy-b",
                operators[1].as_ref().unwrap(),
                &caches.path().join("b.json"),
            )
            .await,
    ];
    cluster.api.apply(route("chat", "chat", "fake"));
    // (A proxy the leader has not heard of yet cannot hold it back; reports arrive
    // within about 100 ms, and old versions in them hold it back until they do.)
    eventually(
        "Programmed by both proxies",
        Duration::from_secs(10),
        || async {
            condition(&cluster, "AIRoute", "chat", "Programmed").filter(|c| {
                c["status"] == "True" && c["message"].as_str().unwrap_or_default().contains("all 2")
            })
        },
    )
    .await;
    let all = operators[leader]
        .as_ref()
        .unwrap()
        .admin_json("/debug/proxies")
        .await;
    assert_eq!(all["allReplicas"].as_array().unwrap().len(), 2, "{all}");

    let mut dead = operators[leader].take().unwrap();
    dead.process.kill();
    let killed = Instant::now();
    let survivor = operators[follower].as_ref().unwrap();
    eventually("the follower to lead", Duration::from_secs(8), || async {
        survivor.is_leader().await.then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(3 + 2), "takeover took {took:?}");
    leader = follower;

    // The new leader writes statuses: a broken route gets its conditions.
    cluster
        .api
        .apply(route("broken", "nothing", "missing-provider"));
    let accepted = wait_condition(
        &cluster,
        "AIRoute",
        "broken",
        "ResolvedRefs",
        "False",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(accepted["reason"], "ProviderNotFound");
    let lease = election_lease(&cluster);
    assert_eq!(
        lease["spec"]["holderIdentity"],
        operators[leader].as_ref().unwrap().identity.as_str()
    );

    // A leader stopped with SIGTERM gives the Lease up instead of letting it expire.
    let mut stopping = operators[leader].take().unwrap();
    stopping.process.sigterm();
    assert!(
        stopping
            .process
            .wait_exit(Duration::from_secs(10))
            .await
            .is_some()
    );
    let lease = election_lease(&cluster);
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

fn election_lease(cluster: &Cluster) -> Value {
    cluster
        .api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("switchboard-system"),
            "switchboard-operator",
        )
        .expect("the election Lease exists")
}

#[tokio::test]
async fn watches_recover_from_expired_versions_and_an_api_outage() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_base(&cluster, &upstream);
    let operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("caches");
    let proxy = cluster
        .proxy("proxy-1", &operator, &caches.path().join("p.json"))
        .await;

    // Every watch is cut and its resourceVersion forgotten: the operator relists.
    cluster.api.expire_watches();
    cluster.api.apply(route("after-expiry", "m1", "fake"));
    eventually(
        "the route after a relist",
        Duration::from_secs(10),
        || async { (chat_status(&proxy, "m1").await == 200).then_some(()) },
    )
    .await;

    // The API server goes away for a while; a change made meanwhile arrives after.
    cluster.api.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.api.apply(route("during-outage", "m2", "fake"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        chat_status(&proxy, "m1").await,
        200,
        "serving through the outage"
    );
    cluster.api.set_unavailable(false);
    eventually(
        "the route after the outage",
        Duration::from_secs(15),
        || async { (chat_status(&proxy, "m2").await == 200).then_some(()) },
    )
    .await;
    assert!(
        operator
            .admin_text("/metrics")
            .await
            .contains("switchboard_operator_watch_errors_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_quickstart_and_lists_routes_with_their_conditions() {
    let cluster = Cluster::start().await;
    let operator = cluster.operator("operator-1").await;
    let caches = TempDir::new("caches");
    let proxy = cluster
        .proxy("proxy-1", &operator, &caches.path().join("p.json"))
        .await;
    let kubectl = |args: &[&str]| {
        let cache = caches.path().join("kubectl-cache");
        let output = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .arg("--cache-dir")
            .arg(cache)
            .args(args)
            .output()
            .expect("kubectl is installed (scripts/test.sh installs it)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "kubectl {args:?}:\n{text}");
        text
    };
    let examples = switchboard_e2e::workspace_root().join("examples/quickstart/gateway.yaml");
    let examples = examples.display().to_string();
    let cluster_ref = &cluster;
    let applied = tokio::task::block_in_place(|| kubectl(&["apply", "-f", &examples]));
    assert!(
        applied.contains("airoute.switchboard.dev/echo"),
        "{applied}"
    );
    // Through the operator the quickstart's public key is refused, and the status says
    // so. (kubectl creates the objects one by one: the operator may first see the
    // consumer without its Secret, SecretNotFound, and only then the placeholder key.)
    let refs = eventually(
        "the quickstart consumer's placeholder key refused",
        Duration::from_secs(5),
        || async {
            cluster
                .condition("AIConsumer", "default", "quickstart", "ResolvedRefs")
                .filter(|c| c["status"] == "False" && c["reason"] == "PlaceholderKey")
        },
    )
    .await;
    assert_eq!(refs["reason"], "PlaceholderKey", "{refs}");
    let own_key = "sk-sb-e2e-own-key-Qx8vT1mZ0rL3kP9wYb2N";
    cluster.api.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "quickstart-key", "namespace": "default"},
        "stringData": {"key": own_key}
    }));
    eventually("the quickstart route", Duration::from_secs(5), || async {
        let status = http_client()
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(own_key)
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        (status == 200).then_some(())
    })
    .await;
    let listed = eventually(
        "Programmed=True in kubectl get",
        Duration::from_secs(5),
        || async {
            let listed = tokio::task::block_in_place(|| kubectl(&["get", "airoutes", "-A"]));
            let _ = cluster_ref;
            (column(&listed, "echo", "PROGRAMMED") == Some("True".to_string())).then_some(listed)
        },
    )
    .await;
    assert_eq!(
        column(&listed, "echo", "ACCEPTED").as_deref(),
        Some("True"),
        "{listed}"
    );
}

/// The cell of column `header` in the row named `name` of `kubectl get` output.
fn column(table: &str, name: &str, header: &str) -> Option<String> {
    let mut lines = table.lines();
    let headers: Vec<&str> = lines.next()?.split_whitespace().collect();
    let index = headers.iter().position(|h| *h == header)?;
    let name_index = headers.iter().position(|h| *h == "NAME")?;
    lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(name_index) == Some(&name))
        .and_then(|cells| cells.get(index).map(ToString::to_string))
}

/// With Redis, proxies share quota counters and the leader writes each AIQuota's usage
/// (consumed, remaining, reset) into its status at the configured interval.
#[tokio::test]
async fn quota_usage_counted_in_redis_appears_in_the_aiquota_status() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_base(&cluster, &upstream);
    cluster.api.apply(route("chat", "chat", "fake"));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIQuota",
        "metadata": {"name": "app-budget", "namespace": NS},
        "spec": {
            "target": {"consumers": ["app"]},
            "limits": [
                {"metric": "Requests", "max": 10, "window": "Hour"},
                {"metric": "TotalTokens", "max": 1000, "window": "Day"}
            ]
        }
    }));
    let url = redis.url();
    let operator = cluster
        .operator_with(
            "operator-1",
            &["--redis-url", &url, "--quota-status-interval", "200ms"],
        )
        .await;
    let caches = TempDir::new("quota-caches");
    let mut args = cluster.proxy_args(
        "proxy-1",
        &operator.config_url(),
        &caches.path().join("p.json"),
    );
    args.extend(["--redis-url".to_string(), url.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start_args(&args, &[]).await;
    wait_condition(
        &cluster,
        "AIQuota",
        "app-budget",
        "Programmed",
        "True",
        Duration::from_secs(10),
    )
    .await;

    for _ in 0..3 {
        assert_eq!(chat_status(&proxy, "chat").await, 200);
    }
    // The fake provider reports 8 tokens per answer.
    let usage = eventually(
        "usage in the AIQuota status",
        Duration::from_secs(10),
        || async {
            let quota = cluster.api.get(
                "switchboard.dev/v1alpha1",
                "AIQuota",
                Some(NS),
                "app-budget",
            )?;
            let usage = quota["status"]["usage"].as_array()?.clone();
            let consumed = |limit: &str| {
                usage
                    .iter()
                    .find(|u| u["limit"] == limit)
                    .and_then(|u| u["consumed"].as_f64())
            };
            (consumed("Requests/Hour") == Some(3.0) && consumed("TotalTokens/Day") == Some(24.0))
                .then_some(usage)
        },
    )
    .await;
    let requests = usage
        .iter()
        .find(|u| u["limit"] == "Requests/Hour")
        .unwrap();
    assert_eq!(requests["consumer"], format!("{NS}/app"));
    assert_eq!(requests["remaining"], 7.0);
    let resets_at = requests["resetsAt"].as_str().unwrap();
    assert!(
        resets_at.ends_with(":00:00Z"),
        "the top of the next hour: {resets_at}"
    );
    // The conditions written by the status writer are still there beside the usage.
    assert!(condition(&cluster, "AIQuota", "app-budget", "Accepted").is_some());
}
