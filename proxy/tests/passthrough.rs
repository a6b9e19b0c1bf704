//! OpenAI-shaped providers: requests rewritten only where they must be, responses and
//! streams passed through byte for byte, usage read from them.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use support::*;

/// An upstream body with unusual spacing, key order and extra fields: any re-encoding
/// by the proxy would change it.
const UPSTREAM_BODY: &str = "{\"id\":\"chatcmpl-1\",  \"object\":\"chat.completion\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi \\u00e9\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9},\"system_fingerprint\":\"fp_x\",\"x_future_field\":[1,2.50,{}]}";

async fn gateway(
    provider: &FakeProvider,
    kind: &str,
    extra: &str,
) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml(
                "up",
                kind,
                &provider.url(),
                &[("gpt-4o", "gpt-4o-2024-08-06"), ("same", "same")],
                extra,
            ),
        )
        .write(
            "route.yaml",
            &route_yaml("smart", &["smart"], "up", "gpt-4o", ""),
        )
        .write(
            "route-same.yaml",
            &route_yaml("same", &["same"], "up", "same", ""),
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

#[tokio::test]
async fn non_streaming_response_passes_through_byte_for_byte() {
    let upstream = FakeProvider::json(200, UPSTREAM_BODY).await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible", "").await;
    let request = r#"{"model":"smart","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"vendor_extension":{"a":[1,2]}}"#;

    let response = post(&proxy, "/v1/chat/completions", request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), UPSTREAM_BODY);

    // Upstream saw the upstream model name, the provider key, and every other field intact.
    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
    assert!(seen.headers.contains_key("x-request-id"));
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        r#"{"model":"gpt-4o-2024-08-06","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"vendor_extension":{"a":[1,2]}}"#
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_needing_no_rewrite_is_forwarded_unchanged() {
    let upstream = FakeProvider::json(200, UPSTREAM_BODY).await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let request = "{ \"model\" : \"same\", \"messages\":[{\"role\":\"user\",\"content\":\"x\"}] }";
    let response = post(&proxy, "/v1/chat/completions", request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.last().body, Bytes::from(request));
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_id_from_the_client_is_kept_and_forwarded() {
    let upstream = FakeProvider::json(200, UPSTREAM_BODY).await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let response = client()
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", "trace-abc-123")
        .body(r#"{"model":"smart","messages":[{"role":"user","content":"x"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(upstream.last().headers["x-request-id"], "trace-abc-123");
    proxy.shutdown().await;
}

fn chunk(content: &str) -> String {
    format!(
        r#"{{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}],"usage":null}}"#
    )
}

const USAGE_CHUNK: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

/// The upstream stream, cut into pieces that split events and lines mid-way.
fn upstream_stream() -> (Vec<(Duration, Bytes)>, Vec<u8>) {
    let mut whole = Vec::new();
    for event in [
        chunk("Hel"),
        chunk("lo"),
        USAGE_CHUNK.to_string(),
        "[DONE]".to_string(),
    ] {
        whole.extend_from_slice(&sse(&event));
    }
    let cuts = [0, 7, 60, 61, whole.len() - 20, whole.len() - 3, whole.len()];
    let pieces = cuts
        .windows(2)
        .map(|w| {
            (
                Duration::from_millis(15),
                Bytes::copy_from_slice(&whole[w[0]..w[1]]),
            )
        })
        .collect();
    (pieces, whole)
}

async fn read_all(response: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

#[tokio::test]
async fn stream_passes_through_byte_for_byte_when_client_asks_for_usage() {
    let upstream = FakeProvider::start(|_| Reply::Stream(upstream_stream().0)).await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let request = r#"{"model":"smart","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let response = post(&proxy, "/v1/chat/completions", request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(read_all(response).await, upstream_stream().1);
    // Only the model changed: the client's own stream_options went up as sent.
    let sent = upstream.last().json();
    assert_eq!(sent["model"], "gpt-4o-2024-08-06");
    assert_eq!(
        sent["stream_options"],
        serde_json::json!({"include_usage": true})
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn stream_asks_upstream_for_usage_and_hides_the_extra_chunk() {
    let upstream = FakeProvider::start(|_| Reply::Stream(upstream_stream().0)).await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    // Spacing and a field no serializer would keep as written.
    let request = r#"{ "model" : "smart","stream":true, "x":1.0e0,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = post(&proxy, "/v1/chat/completions", request).await;
    let received = read_all(response).await;

    // The client's bytes, the model renamed and the usage asked for in a field put
    // first: spliced, not re-serialized.
    let sent = upstream.last();
    let model = sent.json()["model"].as_str().unwrap().to_string();
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        format!(
            r#"{{"stream_options":{{"include_usage":true}}, "model" : "{model}","stream":true, "x":1.0e0,"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    );
    let mut expected = Vec::new();
    for event in [chunk("Hel"), chunk("lo"), "[DONE]".to_string()] {
        expected.extend_from_slice(&sse(&event));
    }
    assert_eq!(
        String::from_utf8(received).unwrap(),
        String::from_utf8(expected).unwrap()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn stream_events_reach_the_client_before_the_upstream_finishes() {
    let (upstream, feed) = FakeProvider::held().await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let request = r#"{"model":"smart","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    // The upstream sends one event and holds the rest until the client sees it. (The
    // proxy answers once a stream's first event is in: until then it may fail over.)
    feed.send(sse(&chunk("first"))).await.unwrap();
    let response = post(&proxy, "/v1/chat/completions", request).await;
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first event arrives while the upstream stream is still open")
        .unwrap()
        .unwrap();
    assert_eq!(first, sse(&chunk("first")));
    feed.send(sse("[DONE]")).await.unwrap();
    drop(feed);
    let rest = stream.next().await.unwrap().unwrap();
    assert_eq!(rest, sse("[DONE]"));
    assert!(stream.next().await.is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn stream_cut_by_the_upstream_ends_with_an_error_event() {
    let upstream = FakeProvider::start(|_| Reply::CutAfter(sse(&chunk("partial")))).await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let request = r#"{"model":"smart","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = post(&proxy, "/v1/chat/completions", request).await;
    let text = String::from_utf8(read_all(response).await).unwrap();
    let (first, rest) = text.split_once("\n\n").unwrap();
    assert_eq!(
        format!("{first}\n\n"),
        String::from_utf8(sse(&chunk("partial")).to_vec()).unwrap()
    );
    assert!(rest.starts_with("data: {\"error\""), "got {text:?}");
    assert!(text.contains("upstream_stream_error"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn azure_uses_deployment_urls_api_version_and_api_key_header() {
    let upstream = FakeProvider::json(200, UPSTREAM_BODY).await;
    let manifests = Manifests::new();
    let endpoint = format!("http://{}", upstream.addr);
    manifests
        .write(
            "provider.yaml",
            &provider_yaml(
                "az",
                "azure-openai",
                &endpoint,
                &[("gpt-4o", "my-gpt4o-deployment")],
                "  azure: {apiVersion: 2024-10-21}\n",
            ),
        )
        .write(
            "route.yaml",
            &route_yaml("r", &["gpt-4o", "text-embedding"], "az", "gpt-4o", ""),
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;

    let response = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(response.text().await.unwrap(), UPSTREAM_BODY);
    let seen = upstream.last();
    assert_eq!(
        seen.uri,
        "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen.headers["api-key"], PROVIDER_KEY);
    assert!(!seen.headers.contains_key("authorization"));

    let response = post(
        &proxy,
        "/v1/embeddings",
        r#"{"model":"text-embedding","input":"x"}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.last().uri,
        "/openai/deployments/my-gpt4o-deployment/embeddings?api-version=2024-10-21"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn embeddings_pass_through() {
    const EMBEDDING: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":2,"total_tokens":2}}"#;
    let upstream = FakeProvider::json(200, EMBEDDING).await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let response = post(
        &proxy,
        "/v1/embeddings",
        r#"{"model":"smart","input":["a","b"],"dimensions":2}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), EMBEDDING);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/v1/embeddings");
    assert_eq!(seen.json()["input"], serde_json::json!(["a", "b"]));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let (upstream, feed) = FakeProvider::held().await;
    let (_m, proxy) = gateway(&upstream, "openai", "").await;
    let request = r#"{"model":"smart","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    feed.send(sse(&chunk("first"))).await.unwrap();
    let response = post(&proxy, "/v1/chat/completions", request).await;
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();

    drop(stream);
    // The proxy drops its upstream request, so the fake provider's body is dropped too.
    tokio::time::timeout(Duration::from_secs(5), feed.closed())
        .await
        .expect("the upstream stream is cancelled when the client leaves");
    proxy.shutdown().await;
}
