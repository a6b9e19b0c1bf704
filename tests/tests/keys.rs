//! `switchboard-operator keys` against the API emulator: the release binary makes a
//! key, stores it and references it; a running operator compiles it and a proxy
//! accepts it; revoking takes it away again. Release binaries must be built first.

use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use switchboard_e2e::cluster::{Cluster, eventually, operator_bin};
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::{Proxy, TempDir, http_client};

const NS: &str = "team-a";
const USER_KEY: &str = "sk-user-made-gateway-key-0001";

fn secret(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"key": value}
    })
}

fn apply_config(cluster: &Cluster, upstream: &FakeUpstream) {
    cluster
        .api
        .apply(secret("provider-key", "sk-keys-provider-key-0001"));
    cluster.api.apply(secret("user-key", USER_KEY));
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
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {"models": ["chat"], "backends": [{"provider": "fake", "model": "fake-model"}]}
    }));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"keys": [{"secretRef": {"name": "user-key", "key": "key"}}]}
    }));
}

/// Runs `switchboard-operator keys ARGS --kubeconfig <the emulator's>`.
async fn keys(cluster: &Cluster, args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(operator_bin())
            .arg("keys")
            .args(args)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .env_remove("SWITCHBOARD_KUBECONFIG")
            .output(),
    )
    .await
    .expect("keys finishes within 30 s")
    .expect("run switchboard-operator keys")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The key a successful `keys create` printed: its whole stdout, one line.
fn printed_key(output: &Output) -> String {
    assert!(
        output.status.success(),
        "keys create failed: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is the key alone: {stdout:?}");
    lines[0].to_string()
}

fn assert_key_format(key: &str) {
    let body = key
        .strip_prefix("sk-sb-")
        .unwrap_or_else(|| panic!("{key} starts with sk-sb-"));
    assert_eq!(key.len(), 49, "{key}");
    assert!(
        body.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{key}"
    );
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    assert_eq!(bytes.len(), 32);
}

/// The consumer's `spec.keys` Secret names, in order.
fn key_refs(cluster: &Cluster) -> Vec<String> {
    let consumer = cluster
        .api
        .get("switchboard.dev/v1alpha1", "AIConsumer", Some(NS), "app")
        .unwrap();
    consumer["spec"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["secretRef"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn stored_key(cluster: &Cluster, name: &str) -> Option<String> {
    let secret = cluster.api.get("v1", "Secret", Some(NS), name)?;
    let data = secret["data"]["key"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    Some(String::from_utf8(bytes).unwrap())
}

async fn chat(proxy: &Proxy, key: &str) -> u16 {
    http_client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_status(proxy: &Proxy, key: &str, status: u16, what: &str) {
    eventually(what, Duration::from_secs(10), || async {
        (chat(proxy, key).await == status).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_created_key_works_end_to_end_and_a_revoked_one_stops_working() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_config(&cluster, &upstream);
    let operator = cluster.operator("operator-keys").await;
    let caches = TempDir::new("keys-caches");
    let proxy = cluster
        .proxy("proxy-keys", &operator, &caches.path().join("p.json"))
        .await;
    wait_status(&proxy, USER_KEY, 200, "the user's key accepted").await;

    // Create: a random key, alone on stdout, stored in a new Secret that the consumer
    // now references beside its existing key.
    let output = keys(&cluster, &["create", "--consumer", "team-a/app"]).await;
    let key = printed_key(&output);
    assert_key_format(&key);
    let refs = key_refs(&cluster);
    assert_eq!(refs.len(), 2, "{refs:?}");
    assert_eq!(refs[0], "user-key", "existing keys stay first: {refs:?}");
    let made = refs[1].clone();
    assert!(made.starts_with("app-key-"), "{made}");
    assert!(
        text(&output.stderr).contains(&made),
        "stderr names the Secret"
    );
    assert!(
        !text(&output.stderr).contains(&key),
        "the key is printed once, on stdout"
    );
    assert_eq!(stored_key(&cluster, &made).as_deref(), Some(key.as_str()));
    let stored = cluster.api.get("v1", "Secret", Some(NS), &made).unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["switchboard.dev/consumer"],
        "app"
    );
    assert_eq!(
        stored["metadata"]["ownerReferences"][0]["kind"],
        "AIConsumer"
    );
    assert_eq!(stored["metadata"]["ownerReferences"][0]["name"], "app");

    // The operator compiles it and the proxy accepts it; the old key still works.
    wait_status(&proxy, &key, 200, "the created key accepted").await;
    assert_eq!(chat(&proxy, USER_KEY).await, 200);

    // A second key under a chosen name, then the list: names, never values.
    let second = printed_key(
        &keys(
            &cluster,
            &["create", "--consumer", "team-a/app", "--secret", "app-ci"],
        )
        .await,
    );
    assert_ne!(second, key);
    let listed = keys(&cluster, &["list", "--consumer", "team-a/app"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let table = text(&listed.stdout);
    for name in ["user-key", made.as_str(), "app-ci"] {
        assert!(table.contains(name), "{table}");
    }
    for value in [USER_KEY, key.as_str(), second.as_str()] {
        assert!(
            !table.contains(value),
            "the list shows a key value: {table}"
        );
    }

    // Revoke the user's own key: the reference goes, its Secret (not made by keys
    // create) stays; the key stops working.
    let output = keys(
        &cluster,
        &["revoke", "--consumer", "team-a/app", "--secret", "user-key"],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("kept Secret"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(key_refs(&cluster), [made.as_str(), "app-ci"]);
    assert_eq!(stored_key(&cluster, "user-key").as_deref(), Some(USER_KEY));
    wait_status(&proxy, USER_KEY, 401, "the revoked user key refused").await;

    // Revoke a made key: reference and Secret go.
    let output = keys(
        &cluster,
        &["revoke", "--consumer", "team-a/app", "--secret", &made],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(key_refs(&cluster), ["app-ci"]);
    assert!(cluster.api.get("v1", "Secret", Some(NS), &made).is_none());
    wait_status(&proxy, &key, 401, "the revoked key refused").await;
    assert_eq!(chat(&proxy, &second).await, 200);

    // The last key is never removed.
    let output = keys(
        &cluster,
        &["revoke", "--consumer", "team-a/app", "--secret", "app-ci"],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("refusing to revoke the last key"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(key_refs(&cluster), ["app-ci"]);
    assert!(stored_key(&cluster, "app-ci").is_some());
    assert_eq!(chat(&proxy, &second).await, 200);
}

#[tokio::test]
async fn keys_commands_fail_clearly_and_change_nothing_on_bad_input() {
    let cluster = Cluster::start().await;
    let upstream = FakeUpstream::start().await;
    apply_config(&cluster, &upstream);
    let secrets_before = cluster.api.list("v1", "Secret").len();

    let cases: &[(&[&str], &str)] = &[
        (
            &["create", "--consumer", "team-a/nope"],
            "AIConsumer team-a/nope not found",
        ),
        (
            &["list", "--consumer", "team-a/nope"],
            "AIConsumer team-a/nope not found",
        ),
        (
            &["revoke", "--consumer", "team-a/nope", "--secret", "x"],
            "AIConsumer team-a/nope not found",
        ),
        (&["create", "--consumer", "app"], "is not NAMESPACE/NAME"),
        (
            &[
                "create",
                "--consumer",
                "team-a/app",
                "--secret",
                "provider-key",
            ],
            "already exists",
        ),
        (
            &["create", "--consumer", "team-a/app", "--secret", "Bad_Name"],
            "is not a valid Secret name",
        ),
        (
            &["revoke", "--consumer", "team-a/app", "--secret", "nothing"],
            "has no key in Secret \"nothing\"",
        ),
    ];
    for (args, message) in cases {
        let output = keys(&cluster, args).await;
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {:?}",
            text(&output.stdout)
        );
    }
    assert_eq!(key_refs(&cluster), ["user-key"]);
    assert_eq!(cluster.api.list("v1", "Secret").len(), secrets_before);
    assert_eq!(
        stored_key(&cluster, "provider-key").as_deref(),
        Some("sk-keys-provider-key-0001"),
        "an existing Secret is never overwritten"
    );
}

#[tokio::test]
async fn a_consumer_applied_before_its_key_gets_the_key_from_keys_create() {
    // An AIConsumer needs a key reference to exist at all: it may name a Secret that
    // keys create then makes, under the data key the reference names.
    let cluster = Cluster::start().await;
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "early", "namespace": NS},
        "spec": {"keys": [{"secretRef": {"name": "early-key", "key": "token"}}]}
    }));
    let output = keys(
        &cluster,
        &[
            "create",
            "--consumer",
            "team-a/early",
            "--secret",
            "early-key",
        ],
    )
    .await;
    let key = printed_key(&output);
    assert_key_format(&key);
    let stored = cluster
        .api
        .get("v1", "Secret", Some(NS), "early-key")
        .unwrap();
    let token = base64::engine::general_purpose::STANDARD
        .decode(stored["data"]["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(token, key.as_bytes());
    let consumer = cluster
        .api
        .get("switchboard.dev/v1alpha1", "AIConsumer", Some(NS), "early")
        .unwrap();
    assert_eq!(
        consumer["spec"]["keys"],
        json!([{"secretRef": {"name": "early-key", "key": "token"}}])
    );
    // Once filled, never overwritten.
    let again = keys(
        &cluster,
        &[
            "create",
            "--consumer",
            "team-a/early",
            "--secret",
            "early-key",
        ],
    )
    .await;
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
}
