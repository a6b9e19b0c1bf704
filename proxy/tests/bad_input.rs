//! A corpus of bad requests, each sent to both client APIs: every one gets a 4xx in
//! that API's own error format, quickly, never reaches the provider, and the proxy
//! goes on serving.
//!
//! An OpenAI request to an OpenAI-shaped provider is forwarded as it came, checked only
//! for what the gateway reads (the body is a JSON object, `model`, `stream`,
//! `messages` an array), so that new OpenAI fields pass without a gateway release; the
//! provider judges the rest and its 400 reaches the client as it is. The cases below
//! that only a typed parse catches are therefore sent, from OpenAI clients, to a route
//! whose provider needs translation (route `t`, an Anthropic provider), where the
//! gateway types every field.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// `(what, body)`: malformed, truncated, wrongly typed, deeply nested, huge, invalid
/// UTF-8, empty.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        r#"{{"model":"m","max_tokens":8,"messages":[{{"role":"user","content":{deep}}}]}}"#
    );
    let mut invalid_utf8 =
        br#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("whitespace", "   \n ".into()),
        ("not JSON", "model=m&messages=hi".into()),
        ("truncated", r#"{"model":"m","messages":[{"role":"us"#.into()),
        ("a JSON array", "[1,2,3]".into()),
        ("a JSON string", r#""hello""#.into()),
        ("null", "null".into()),
        ("model a number", r#"{"model":5,"max_tokens":8,"messages":[]}"#.into()),
        ("model empty", r#"{"model":"","max_tokens":8,"messages":[{"role":"user","content":"x"}]}"#.into()),
        ("model huge", format!(r#"{{"model":"{}","messages":[]}}"#, "m".repeat(100_000))),
        ("messages a string", r#"{"model":"m","max_tokens":8,"messages":"hi"}"#.into()),
        ("messages missing", r#"{"model":"m","max_tokens":8}"#.into()),
        ("a message not an object", r#"{"model":"m","max_tokens":8,"messages":[42]}"#.into()),
        ("an unknown role", r#"{"model":"m","max_tokens":8,"messages":[{"role":"wizard","content":"x"}]}"#.into()),
        ("content a number", r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":7}]}"#.into()),
        ("max_tokens a string", r#"{"model":"m","max_tokens":"many","messages":[{"role":"user","content":"x"}]}"#.into()),
        ("max_tokens negative", r#"{"model":"m","max_tokens":-1,"messages":[{"role":"user","content":"x"}]}"#.into()),
        ("max_tokens huge", r#"{"model":"m","max_tokens":123456789012345678901234567890,"messages":[{"role":"user","content":"x"}]}"#.into()),
        ("temperature huge", r#"{"model":"m","max_tokens":8,"temperature":1e999,"messages":[{"role":"user","content":"x"}]}"#.into()),
        ("stream a string", r#"{"model":"m","max_tokens":8,"stream":"yes","messages":[{"role":"user","content":"x"}]}"#.into()),
        ("duplicate and trailing garbage", r#"{"model":"m","messages":[]} trailing"#.into()),
        ("deep nesting", deep_object),
    ];
    let mut out: Vec<(&str, Vec<u8>)> = cases
        .into_iter()
        .map(|(what, body)| (what, body.into_bytes()))
        .collect();
    out.push(("invalid UTF-8", invalid_utf8));
    out
}

/// Cases an OpenAI request passes through to an OpenAI-shaped provider with.
const TYPED_ONLY: &[&str] = &[
    "a message not an object",
    "an unknown role",
    "content a number",
    "max_tokens a string",
    "max_tokens negative",
    "max_tokens huge",
    "temperature huge",
    "deep nesting",
];

#[tokio::test]
async fn every_bad_request_gets_a_4xx_in_its_apis_format_and_the_proxy_keeps_serving() {
    let upstream = FakeProvider::json(
        200,
        r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#,
    )
    .await;
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml(
                "up",
                "openai-compatible",
                &upstream.url(),
                &[("m", "m")],
                "",
            ),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", ""))
        .write(
            "translated.yaml",
            &provider_yaml("claude", "anthropic", &upstream.url(), &[("t", "t")], ""),
        )
        .write("route-t.yaml", &route_yaml("t", &["t"], "claude", "t", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let client = client();

    for (what, body) in corpus() {
        for anthropic in [false, true] {
            let request = match anthropic {
                false => client
                    .post(url(&proxy, "/v1/chat/completions"))
                    .bearer_auth(KEY),
                true => client
                    .post(url(&proxy, "/v1/messages"))
                    .header("x-api-key", KEY)
                    .header("anthropic-version", "2023-06-01"),
            };
            // What only a typed parse catches goes, from OpenAI clients, to route `t`.
            let body = match (anthropic, TYPED_ONLY.contains(&what)) {
                (false, true) => String::from_utf8_lossy(&body)
                    .replacen(r#""model":"m""#, r#""model":"t""#, 1)
                    .into_bytes(),
                _ => body.clone(),
            };
            let started = Instant::now();
            let response = request
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let api = if anthropic { "anthropic" } else { "openai" };
            assert!(
                (400..500).contains(&status),
                "{what} ({api}): status {status}: {}",
                &text[..text.len().min(300)]
            );
            assert!(
                took < Duration::from_secs(2),
                "{what} ({api}) took {took:?}"
            );
            let error: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{what} ({api}): not JSON: {text}"));
            if anthropic {
                assert_eq!(error["type"], "error", "{what}: {text}");
                assert!(error["error"]["type"].is_string(), "{what}: {text}");
                assert!(error["error"]["message"].is_string(), "{what}: {text}");
            } else {
                assert!(error["error"]["type"].is_string(), "{what}: {text}");
                assert!(error["error"]["message"].is_string(), "{what}: {text}");
                assert!(error["error"]["code"].is_string(), "{what}: {text}");
            }
        }
    }
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no bad request reached the provider"
    );

    // Still serving, in both APIs.
    let ok = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"fine"}]}"#,
    )
    .await;
    assert_eq!(ok.status(), 200);
}
