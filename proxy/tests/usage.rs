//! Usage as providers bill it, through the gateway: cache reads and writes, reasoning
//! and thoughts, counted in metrics and priced at each kind's rate, whatever API the
//! client speaks; usage a stream reports only at its end still counts.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use support::*;

/// A gateway with model `m` on a provider of `kind` at `upstream`, priced `pricing`.
async fn gateway(
    upstream: &FakeProvider,
    kind: &str,
    pricing: &str,
) -> (Manifests, switchboard_proxy::Proxy) {
    let provider = provider_yaml("up", kind, &upstream.url(), &[("m", "up-model")], "").replacen(
        "upstreamName: up-model}",
        &format!("upstreamName: up-model, pricing: {pricing}}}"),
        1,
    );
    assert!(
        provider.contains("pricing"),
        "the model line is as expected"
    );
    let manifests = Manifests::new();
    manifests
        .write("provider.yaml", &provider)
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

fn stream(events: &[&str]) -> Reply {
    Reply::Stream(
        events
            .iter()
            .map(|e| {
                (
                    Duration::from_millis(2),
                    Bytes::from(format!("data: {e}\n\n")),
                )
            })
            .collect(),
    )
}

/// o-series answer passed through to an OpenAI client: reasoning is part of
/// `completion_tokens`, counted apart and priced as output (gpt-4o's prices).
#[tokio::test]
async fn openai_reasoning_tokens_are_counted_and_priced_as_output() {
    const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"o-up","choices":[{"index":0,"message":{"role":"assistant","content":"4"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2000,"completion_tokens":300,"total_tokens":2300,"prompt_tokens_details":{"cached_tokens":1536,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":200,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
    let upstream = FakeProvider::json(200, ANSWER).await;
    let (_m, proxy) = gateway(
        &upstream,
        "openai",
        "{inputPerMillion: 2.5, cachedInputPerMillion: 1.25, outputPerMillion: 10}",
    )
    .await;
    let response = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"2+2?"}]}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), ANSWER, "passed through");

    let scrape = scrape(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 2000.0);
    assert_eq!(tokens(&scrape, "cache_read"), 1536.0);
    assert_eq!(tokens(&scrape, "cache_creation"), 0.0);
    assert_eq!(tokens(&scrape, "output"), 300.0);
    assert_eq!(tokens(&scrape, "reasoning"), 200.0);
    // gpt-4o prices (openai.com/api/pricing): 464 * 2.50 + 1,536 * 1.25 + 300 * 10
    // = 6,080 per million.
    assert!(
        (cost(&scrape) - 0.006_08).abs() < 1e-12,
        "{}",
        cost(&scrape)
    );
    proxy.shutdown().await;
}

/// Gemini bills thoughts as output but leaves them out of `candidatesTokenCount`: an
/// OpenAI client streaming from Gemini gets them in `completion_tokens` (and its
/// `reasoning_tokens`), and they are counted and priced.
#[tokio::test]
async fn gemini_stream_thoughts_are_output() {
    let upstream = FakeProvider::start(|_| {
        stream(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Chey"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":10000,"cachedContentTokenCount":8000,"totalTokenCount":10000},"modelVersion":"gemini-2.5-pro"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"enne"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":10000,"cachedContentTokenCount":8000,"candidatesTokenCount":1000,"thoughtsTokenCount":3000,"totalTokenCount":14000},"modelVersion":"gemini-2.5-pro"}"#,
        ])
    })
    .await;
    let (_m, proxy) = gateway(
        &upstream,
        "gemini",
        "{inputPerMillion: 1.25, cachedInputPerMillion: 0.31, outputPerMillion: 10}",
    )
    .await;
    let response = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Capital of Wyoming?"}]}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let usage: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .unwrap_or_else(|| panic!("no usage chunk in {text}"));
    assert_eq!(usage["prompt_tokens"], 10_000);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 8000);
    assert_eq!(usage["completion_tokens"], 4000);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 3000);

    let scrape = settled(&proxy).await;
    assert_eq!(tokens(&scrape, "output"), 4000.0);
    assert_eq!(tokens(&scrape, "reasoning"), 3000.0);
    assert_eq!(tokens(&scrape, "cache_read"), 8000.0);
    // Gemini 2.5 Pro (ai.google.dev/gemini-api/docs/pricing, prompts <= 200k):
    // 2,000 * 1.25 + 8,000 * 0.31 + 4,000 * 10 = 44,980 per million.
    assert!(
        (cost(&scrape) - 0.044_98).abs() < 1e-12,
        "{}",
        cost(&scrape)
    );
    proxy.shutdown().await;
}

/// An OpenAI stream reports usage only in its last chunk: an Anthropic client still
/// gets it, in Anthropic's terms (`input_tokens` without the cached reads, which are
/// `cache_read_input_tokens`), and it is counted.
#[tokio::test]
async fn usage_reported_only_at_a_streams_end_counts_for_an_anthropic_client() {
    let upstream = FakeProvider::start(|_| {
        stream(&[
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"o-up","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"o-up","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"o-up","choices":[],"usage":{"prompt_tokens":2000,"completion_tokens":300,"total_tokens":2300,"prompt_tokens_details":{"cached_tokens":1536},"completion_tokens_details":{"reasoning_tokens":200}}}"#,
            "[DONE]",
        ])
    })
    .await;
    let (_m, proxy) = gateway(
        &upstream,
        "openai",
        "{inputPerMillion: 2.5, cachedInputPerMillion: 1.25, outputPerMillion: 10}",
    )
    .await;
    let response = client()
        .post(url(&proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "m", "max_tokens": 100, "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let delta: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "message_delta")
        .unwrap_or_else(|| panic!("no message_delta in {text}"));
    assert_eq!(delta["usage"]["input_tokens"], 464, "{delta}");
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 1536);
    assert_eq!(delta["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(delta["usage"]["output_tokens"], 300);

    let scrape = settled(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 2000.0);
    assert_eq!(tokens(&scrape, "cache_read"), 1536.0);
    assert_eq!(tokens(&scrape, "reasoning"), 200.0);
    assert!(
        (cost(&scrape) - 0.006_08).abs() < 1e-12,
        "{}",
        cost(&scrape)
    );
    proxy.shutdown().await;
}

/// Anthropic bills cache writes kept an hour (`cache_control: {ttl: "1h"}`) at twice
/// the input price, 5-minute writes at 1.25 times: a coding agent's stream that writes
/// both, passed through, is priced at each rate; the same answer translated for an
/// OpenAI client (whose usage has no place for cache writes) is priced the same.
#[tokio::test]
async fn one_hour_cache_writes_are_priced_at_their_own_rate() {
    const EVENTS: [&str; 6] = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-up","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":100,"cache_creation_input_tokens":2000,"cache_read_input_tokens":10000,"cache_creation":{"ephemeral_5m_input_tokens":500,"ephemeral_1h_input_tokens":1500},"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Done."}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":500}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let upstream = FakeProvider::start(|_| stream(&EVENTS)).await;
    // Claude Sonnet (anthropic.com/pricing): $3 input, $3.75 5-minute writes, $6
    // 1-hour writes, $0.30 cache reads, $15 output; the 1-hour price left to its
    // default (2 x input).
    let (_m, proxy) = gateway(
        &upstream,
        "anthropic",
        "{inputPerMillion: 3, cacheWritePerMillion: 3.75, cachedInputPerMillion: 0.3, outputPerMillion: 15}",
    )
    .await;
    // 100 * 3 + 500 * 3.75 + 1,500 * 6 + 10,000 * 0.30 + 500 * 15
    // = 300 + 1,875 + 9,000 + 3,000 + 7,500 = 21,675 per million.
    const COST: f64 = 0.021_675;

    let agent = client()
        .post(url(&proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .body(r#"{"model":"m","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"go"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(agent.status(), StatusCode::OK);
    agent.text().await.unwrap();
    let scrape = settled(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 12_100.0);
    assert_eq!(tokens(&scrape, "cache_creation"), 2_000.0);
    assert!((cost(&scrape) - COST).abs() < 1e-12, "{}", cost(&scrape));

    // Translated for an OpenAI client: the same price again.
    let openai = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}"#,
    )
    .await;
    assert_eq!(openai.status(), StatusCode::OK);
    openai.text().await.unwrap();
    let mut now = scrape;
    for _ in 0..50 {
        if tokens(&now, "output") >= 1000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = support::scrape(&proxy).await;
    }
    assert!((cost(&now) - 2.0 * COST).abs() < 1e-12, "{}", cost(&now));
    proxy.shutdown().await;
}
