//! Routing by model name, aliases, header matches and consumer allowlists.

mod support;

use std::sync::atomic::Ordering;

use http::StatusCode;
use support::*;

const OK_A: &str = r#"{"from":"a"}"#;
const OK_B: &str = r#"{"from":"b"}"#;

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
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

#[tokio::test]
async fn routes_by_model_name_and_alias() {
    let a = FakeProvider::json(200, OK_A).await;
    let b = FakeProvider::json(200, OK_B).await;
    let manifests = Manifests::new();
    manifests
        .write(
            "a.yaml",
            &provider_yaml("a", "openai", &a.url(), &[("model-a", "upstream-a")], ""),
        )
        .write(
            "b.yaml",
            &provider_yaml(
                "b",
                "openai-compatible",
                &b.url(),
                &[("model-b", "upstream-b")],
                "",
            ),
        )
        .write(
            "route-a.yaml",
            &route_yaml("ra", &["gpt-a", "fast"], "a", "model-a", ""),
        )
        .write(
            "route-b.yaml",
            &route_yaml("rb", &["gpt-b"], "b", "model-b", ""),
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;

    for (model, expected, upstream_model) in [
        ("gpt-a", OK_A, "upstream-a"),
        ("fast", OK_A, "upstream-a"),
        ("gpt-b", OK_B, "upstream-b"),
    ] {
        let response = post(&proxy, "/v1/chat/completions", chat(model)).await;
        assert_eq!(response.text().await.unwrap(), expected, "model {model}");
        let upstream = if expected == OK_A { &a } else { &b };
        assert_eq!(upstream.last().json()["model"], upstream_model);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
    assert_eq!(models(&proxy, KEY).await, ["fast", "gpt-a", "gpt-b"]);

    let one = client()
        .get(url(&proxy, "/v1/models/gpt-b"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    let missing = client()
        .get(url(&proxy, "/v1/models/gpt-z"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "model_not_found").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn header_match_takes_precedence_for_the_same_model() {
    let a = FakeProvider::json(200, OK_A).await;
    let b = FakeProvider::json(200, OK_B).await;
    let manifests = Manifests::new();
    manifests
        .write("a.yaml", &provider_yaml("a", "openai", &a.url(), &[("m", "m")], ""))
        .write("b.yaml", &provider_yaml("b", "openai", &b.url(), &[("m", "m")], ""))
        .write("default.yaml", &route_yaml("default", &["chat"], "a", "m", ""))
        .write(
            "canary.yaml",
            &route_yaml("canary", &["chat"], "b", "m", "  headers:\n    - {name: X-Switchboard-Route, value: canary}\n    - {name: x-team, value: 'ml-.*', type: RegularExpression}\n"),
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;

    let send = |headers: &'static [(&'static str, &'static str)]| {
        let proxy_url = url(&proxy, "/v1/chat/completions");
        async move {
            let mut request = client().post(proxy_url).bearer_auth(KEY).body(chat("chat"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send().await.unwrap().text().await.unwrap()
        }
    };
    assert_eq!(send(&[]).await, OK_A);
    assert_eq!(
        send(&[("x-switchboard-route", "canary")]).await,
        OK_A,
        "every header must match"
    );
    assert_eq!(
        send(&[("x-switchboard-route", "canary"), ("x-team", "ml-research")]).await,
        OK_B
    );
    assert_eq!(
        send(&[("x-switchboard-route", "canary"), ("x-team", "web-ml-x")]).await,
        OK_A,
        "regex is anchored"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn consumer_allowlists_limit_models_and_routes() {
    let a = FakeProvider::json(200, OK_A).await;
    let manifests = Manifests::new();
    manifests
        .write(
            "a.yaml",
            &provider_yaml("a", "openai", &a.url(), &[("m", "m")], ""),
        )
        .write("r1.yaml", &route_yaml("r1", &["one", "uno"], "a", "m", ""))
        .write("r2.yaml", &route_yaml("r2", &["two"], "a", "m", ""))
        .write(
            "consumer.yaml",
            &consumer_yaml(
                "limited",
                "  allowedModels: [one, two]\n  allowedRoutes: [{name: r1}]\n",
            ),
        );
    let proxy = proxy(&manifests).await;

    assert_eq!(
        post(&proxy, "/v1/chat/completions", chat("one"))
            .await
            .status(),
        StatusCode::OK
    );
    // Not in allowedModels, though its route is allowed.
    assert_error(
        post(&proxy, "/v1/chat/completions", chat("uno")).await,
        404,
        "model_not_found",
    )
    .await;
    // In allowedModels, but its route is not allowed.
    assert_error(
        post(&proxy, "/v1/chat/completions", chat("two")).await,
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(models(&proxy, KEY).await, ["one"]);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn weighted_backends_share_traffic_within_the_first_tier() {
    let a = FakeProvider::json(200, OK_A).await;
    let b = FakeProvider::json(200, OK_B).await;
    let c = FakeProvider::json(200, r#"{"from":"fallback"}"#).await;
    let manifests = Manifests::new();
    manifests
        .write("a.yaml", &provider_yaml("a", "openai", &a.url(), &[("m", "m")], ""))
        .write("b.yaml", &provider_yaml("b", "openai", &b.url(), &[("m", "m")], ""))
        .write("c.yaml", &provider_yaml("c", "openai", &c.url(), &[("m", "m")], ""))
        .write(
            "route.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec:\n  models: [m]\n  backends:\n    - {provider: a, model: m, weight: 1}\n    - {provider: b, model: m, weight: 1}\n    - {provider: c, model: m, priority: 1}\n",
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    for _ in 0..60 {
        assert_eq!(
            post(&proxy, "/v1/chat/completions", chat("m"))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let (hits_a, hits_b) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(hits_a + hits_b, 60);
    assert!(
        hits_a >= 10 && hits_b >= 10,
        "both first-tier backends get traffic: a={hits_a} b={hits_b}"
    );
    assert_eq!(
        c.hits.load(Ordering::SeqCst),
        0,
        "the fallback tier is not used while the first tier is up"
    );
    proxy.shutdown().await;
}
