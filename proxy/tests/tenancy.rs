//! Namespaces as tenant boundaries, through a real standalone proxy with three
//! namespaces in one manifests directory: each case that once let a team in where it
//! did not belong.

mod support;

use support::*;

const KEY_A: &str = "sk-team-a-app-Zq8Lw2Xc9Rv4Tb7MpK3d";
const KEY_B: &str = "sk-team-b-app-Hy6Nf1Qs8Wd3Ge5JcV2x";
const KEY_DEFAULT: &str = "sk-default-app-Pt4Km9Bx2Lr7Yc1Fz6Q";

/// In `namespace`: an openai-compatible provider at `upstream` serving `model`, a route
/// `route` for `models` (with `route_extra` in its spec), and consumer `app` with `key`
/// (with `consumer_extra` in its spec).
fn team(
    namespace: &str,
    upstream: &FakeProvider,
    route: &str,
    models: &[&str],
    route_extra: &str,
    key: &str,
    consumer_extra: &str,
) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: llm, namespace: {namespace}}}
spec:
  type: openai-compatible
  endpoint: {url}
  auth: {{secretRef: {{name: llm-key, key: apiKey}}}}
  models: [{{name: m}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: llm-key, namespace: {namespace}}}
stringData: {{apiKey: sk-provider-key-of-{namespace}}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: {route}, namespace: {namespace}}}
spec:
  models: [{models}]
  backends: [{{provider: llm, model: m}}]
{route_extra}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIConsumer
metadata: {{name: app, namespace: {namespace}}}
spec:
  keys: [{{secretRef: {{name: app-key, key: key}}}}]
{consumer_extra}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-key, namespace: {namespace}}}
stringData: {{key: {key}}}
"#,
        url = upstream.url(),
        models = models.join(", "),
    )
}

async fn ask(
    proxy: &switchboard_proxy::Proxy,
    key: &str,
    model: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client()
        .post(url(proxy, "/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .unwrap()
}

async fn models(proxy: &switchboard_proxy::Proxy, key: &str) -> Vec<String> {
    let list: serde_json::Value = client()
        .get(url(proxy, "/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;

#[tokio::test]
async fn a_consumer_cannot_use_or_see_another_namespaces_routes() {
    let upstream_a = FakeProvider::json(200, ANSWER).await;
    let upstream_default = FakeProvider::json(200, ANSWER).await;
    let manifests = Manifests::new();
    manifests
        .write(
            "team-a.yaml",
            &team("team-a", &upstream_a, "chat", &["gpt-4o"], "", KEY_A, ""),
        )
        .write(
            "default.yaml",
            &team(
                "default",
                &upstream_default,
                "demo",
                &["demo"],
                "",
                KEY_DEFAULT,
                "",
            ),
        );
    let proxy = proxy(&manifests).await;

    let response = ask(&proxy, KEY_DEFAULT, "gpt-4o", &[]).await;
    let message = assert_error(response, 404, "model_not_found").await;
    assert!(!message.contains("team-a"), "{message}");
    assert!(
        upstream_a.received().is_empty(),
        "team-a's provider key was not spent"
    );
    assert_eq!(models(&proxy, KEY_DEFAULT).await, ["demo"]);

    assert_eq!(ask(&proxy, KEY_A, "gpt-4o", &[]).await.status(), 200);
    assert_eq!(upstream_a.received().len(), 1);
    assert_eq!(models(&proxy, KEY_A).await, ["gpt-4o"]);
}

#[tokio::test]
async fn a_catch_all_header_route_of_another_team_cannot_capture_traffic() {
    let upstream_a = FakeProvider::json(200, ANSWER).await;
    let upstream_b = FakeProvider::json(200, ANSWER).await;
    let grabber = r#"  headers: [{name: content-type, value: ".*", type: RegularExpression}]
  allowedConsumers: {namespaces: {from: All}}"#;
    let manifests = Manifests::new();
    manifests
        .write(
            "team-a.yaml",
            &team("team-a", &upstream_a, "chat", &["gpt-4o"], "", KEY_A, ""),
        )
        .write(
            "team-b.yaml",
            &team(
                "team-b",
                &upstream_b,
                "grabber",
                &["gpt-4o"],
                grabber,
                KEY_B,
                "",
            ),
        );
    let proxy = proxy(&manifests).await;

    for _ in 0..3 {
        let response = ask(&proxy, KEY_A, "gpt-4o", &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-switchboard-provider"], "team-a/llm");
    }
    assert_eq!(upstream_a.received().len(), 3);
    assert!(
        upstream_b.received().is_empty(),
        "team-a's prompts never reached team-b's provider"
    );
    let response = ask(&proxy, KEY_B, "gpt-4o", &[]).await;
    assert_eq!(response.headers()["x-switchboard-provider"], "team-b/llm");
}

#[tokio::test]
async fn the_platform_namespace_shares_routes_with_the_namespaces_it_allows() {
    let upstream_a = FakeProvider::json(200, ANSWER).await;
    let upstream_b = FakeProvider::json(200, ANSWER).await;
    let upstream_platform = FakeProvider::json(200, ANSWER).await;
    let shared = r#"  allowedConsumers:
    namespaces:
      from: Selector
      selector: {matchLabels: {switchboard.dev/shared-models: "true"}}"#;
    let manifests = Manifests::new();
    manifests
        .write(
            "team-a.yaml",
            &team("team-a", &upstream_a, "chat", &["own"], "", KEY_A, ""),
        )
        .write(
            "team-b.yaml",
            &team("team-b", &upstream_b, "chat", &["own"], "", KEY_B, ""),
        )
        .write(
            "platform.yaml",
            &team(
                "platform",
                &upstream_platform,
                "shared",
                &["shared-model"],
                shared,
                "sk-platform-app-Vb3Hn8Jq1Ws6Ek9Rt4Z",
                "",
            ),
        )
        .write(
            "namespaces.yaml",
            r#"
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels: {switchboard.dev/shared-models: "true"}
"#,
        );

    let with_platform = proxy_with(&manifests, |s| {
        s.platform_namespace = Some("platform".into());
    })
    .await;
    let response = ask(&with_platform, KEY_A, "shared-model", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-provider"], "platform/llm");
    assert_eq!(models(&with_platform, KEY_A).await, ["own", "shared-model"]);
    let response = ask(&with_platform, KEY_B, "shared-model", &[]).await;
    assert_error(response, 404, "model_not_found").await;
    assert_eq!(models(&with_platform, KEY_B).await, ["own"]);
    drop(with_platform);

    // Without the flag, team-a is offered nothing: a grant alone brings no route.
    let without = proxy(&manifests).await;
    let response = ask(&without, KEY_A, "shared-model", &[]).await;
    assert_error(response, 404, "model_not_found").await;
}

#[tokio::test]
async fn a_quota_throttles_only_its_own_namespace_and_a_429_names_no_other_teams_quota() {
    let upstream_a = FakeProvider::json(200, ANSWER).await;
    let upstream_b = FakeProvider::json(200, ANSWER).await;
    let upstream_platform = FakeProvider::json(200, ANSWER).await;
    let quota = |namespace: &str, name: &str, max: u32| {
        format!(
            r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIQuota
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  target: {{}}
  limits: [{{metric: Requests, max: {max}, window: Hour}}]
"#
        )
    };
    let manifests = Manifests::new();
    manifests
        .write(
            "team-a.yaml",
            &team("team-a", &upstream_a, "chat", &["m"], "", KEY_A, ""),
        )
        .write(
            "team-b.yaml",
            &team("team-b", &upstream_b, "chat", &["m"], "", KEY_B, ""),
        )
        .write(
            "platform.yaml",
            &team(
                "platform",
                &upstream_platform,
                "chat",
                &["m"],
                "",
                "sk-platform-app-Vb3Hn8Jq1Ws6Ek9Rt4Z",
                "",
            ),
        )
        .write("team-b-quota.yaml", &quota("team-b", "b-secret-budget", 0))
        .write("platform-quota.yaml", &quota("platform", "cluster-cap", 2));
    let proxy = proxy_with(&manifests, |s| {
        s.platform_namespace = Some("platform".into());
    })
    .await;

    // team-b's empty-target quota (max 0) throttles team-b only.
    let message = assert_error(ask(&proxy, KEY_B, "m", &[]).await, 429, "quota_exceeded").await;
    assert!(message.contains("team-b/b-secret-budget"), "{message}");

    // The platform's cap (2 per hour) applies to team-a; team-b's quota does not.
    for _ in 0..2 {
        assert_eq!(ask(&proxy, KEY_A, "m", &[]).await.status(), 200);
    }
    let response = ask(&proxy, KEY_A, "m", &[]).await;
    let headers = format!("{:?}", response.headers());
    let message = assert_error(response, 429, "quota_exceeded").await;
    for secret in ["b-secret-budget", "cluster-cap", "team-b", "platform/"] {
        assert!(!message.contains(secret), "{secret} in {message}");
        assert!(!headers.contains(secret), "{secret} in {headers}");
    }
    assert!(message.contains("platform namespace"), "{message}");
}

#[tokio::test]
async fn placeholder_and_published_keys_do_not_work() {
    let upstream = FakeProvider::json(200, ANSWER).await;
    let placeholder = "sk-switchboard-REPLACE-WITH-A-LONG-RANDOM-KEY";
    let manifests = Manifests::new();
    manifests.write(
        "team.yaml",
        &team("default", &upstream, "chat", &["m"], "", placeholder, ""),
    );
    let first = proxy(&manifests).await;
    assert_error(
        ask(&first, placeholder, "m", &[]).await,
        401,
        "invalid_api_key",
    )
    .await;
    drop(first);

    // The quickstart's public key, beside a real provider, is refused too.
    let manifests = Manifests::new();
    manifests.write(
        "team.yaml",
        &team(
            "default",
            &upstream,
            "chat",
            &["m"],
            "",
            "sk-switchboard-quickstart",
            "",
        ),
    );
    let second = proxy(&manifests).await;
    let response = ask(&second, "sk-switchboard-quickstart", "m", &[]).await;
    assert_error(response, 401, "invalid_api_key").await;
    assert!(upstream.received().is_empty());
}
