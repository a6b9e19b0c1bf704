//! Tolerant reading of provider answers, end to end (real fake providers on loopback):
//! `null` is the same as absent, a missing model name is the model asked for, and a
//! success whose body cannot be read is not paid for twice. Also the `echo` provider's
//! embeddings over HTTP.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use support::*;

/// A gateway with model `m` (upstream `up-model`) served by `upstream`, a provider of
/// `kind`, on a route with `retry` (route YAML) and one backend.
async fn gateway(
    upstream: &FakeProvider,
    kind: &str,
    retry: &str,
) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml("up", kind, &upstream.url(), &[("m", "up-model")], ""),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", retry))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

async fn post_messages(proxy: &switchboard_proxy::Proxy, body: &Value) -> reqwest::Response {
    client()
        .post(url(proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Log lines written while it lives, on this thread (a `#[tokio::test]` runs the proxy
/// on the test's thread).
struct Logs {
    lines: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(lines.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap()).into_owned()
    }
}

fn hello(stream: bool) -> Value {
    json!({"model": "m", "max_tokens": 50, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
}

/// Several OpenAI-compatible servers write every optional field, `null` when unset.
/// Before: the answer failed to parse, was retried three times (each answered, and
/// billed) and ended in a 502.
#[tokio::test]
async fn an_anthropic_client_reads_an_answer_with_null_tool_calls() {
    let upstream = FakeProvider::json(
        200,
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":null,
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello!",
            "tool_calls":null,"function_call":null,"refusal":null},"logprobs":null,
            "finish_reason":"stop"}],
            "usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,
            "prompt_tokens_details":null,"completion_tokens_details":null}}"#,
    )
    .await;
    let (_manifests, proxy) =
        gateway(&upstream, "openai-compatible", "  retry: {attempts: 3}\n").await;
    let response = post_messages(&proxy, &hello(false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "Hello!", "{body}");
    assert_eq!(body["stop_reason"], "end_turn", "{body}");
    assert_eq!(body["usage"]["input_tokens"], 5, "{body}");
    assert_eq!(body["usage"]["output_tokens"], 2, "{body}");
    // `"model": null`: the model the gateway asked for.
    assert_eq!(body["model"], "up-model", "{body}");
    assert_eq!(upstream.received().len(), 1);
}

/// The same answer streamed, with `null` on every chunk's optional fields.
#[tokio::test]
async fn an_anthropic_client_streams_chunks_with_null_fields() {
    let chunks = [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":null,"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"","choices":[{"index":0,"delta":{"content":"Hello!","tool_calls":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"","choices":[{"index":0,"delta":{"content":null,"tool_calls":null},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":null}}"#,
        "[DONE]",
    ];
    let pieces: Vec<_> = chunks
        .iter()
        .map(|c| (std::time::Duration::ZERO, sse(c)))
        .collect();
    let upstream = FakeProvider::start(move |_| Reply::Stream(pieces.clone())).await;
    let (_manifests, proxy) =
        gateway(&upstream, "openai-compatible", "  retry: {attempts: 3}\n").await;
    let response = post_messages(&proxy, &hello(true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("event: error"), "{text}");
    assert!(text.contains(r#""text":"Hello!""#), "{text}");
    // `"model": ""` on every chunk: the model the gateway asked for.
    assert!(text.contains(r#""model":"up-model""#), "{text}");
    assert!(text.contains(r#""output_tokens":2"#), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
}

/// A Gemini answer without `modelVersion` names the model the gateway asked for,
/// whole and streamed (before: `"model": ""`).
#[tokio::test]
async fn a_gemini_answer_without_a_model_names_the_model_asked_for() {
    let whole = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello!"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2}}"#;
    let upstream = FakeProvider::start(move |received| {
        if received.uri.contains("streamGenerateContent") {
            Reply::Stream(vec![(std::time::Duration::ZERO, sse(whole))])
        } else {
            Reply::Json(StatusCode::OK, Bytes::from_static(whole.as_bytes()))
        }
    })
    .await;
    let (_manifests, proxy) = gateway(&upstream, "gemini", "").await;
    let chat = |stream: bool| {
        json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "up-model", "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!", "{body}");

    let response = post(&proxy, "/v1/chat/completions", chat(true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains(r#""model":"up-model""#), "{text}");
    assert!(!text.contains(r#""model":"""#), "{text}");
}

/// A 200 whose body cannot be read was answered, and billed: it is not asked again
/// of the same backend, however many attempts the route allows.
#[tokio::test]
async fn an_unreadable_success_is_not_retried_on_the_same_backend() {
    for body in [
        r#"{"choices":[{"message":{"content":"SECRET"#,
        r#"{"choices":[{"message":{"content":["SECRET"]}}]}"#,
    ] {
        let logs = Logs::capture();
        let upstream = FakeProvider::json(200, body).await;
        let (_manifests, proxy) = gateway(
            &upstream,
            "openai-compatible",
            "  retry: {attempts: 3, backoff: 10ms}\n",
        )
        .await;
        let response = post_messages(&proxy, &hello(false)).await;
        assert_eq!(response.status(), 502, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("cannot be read"), "{message}");
        assert!(message.contains("at line 1 column"), "{message}");
        assert!(!message.contains("SECRET"), "no body content: {message}");
        assert_eq!(upstream.received().len(), 1, "{body}");
        // Warned with what was wrong and where, never what the body held.
        let logged = logs.text();
        assert!(logged.contains("WARN"), "{logged}");
        assert!(logged.contains("cannot be read"), "{logged}");
        assert!(logged.contains("at line 1 column"), "{logged}");
        assert!(logged.contains("default/up"), "{logged}");
        assert!(!logged.contains("SECRET"), "{logged}");
        // Counted by its own error code.
        let samples = scrape(&proxy).await;
        assert_eq!(
            metric(
                &samples,
                "switchboard_upstream_attempts_total",
                &[
                    ("provider", "default/up"),
                    ("outcome", "upstream_unreadable_response")
                ]
            ),
            1.0
        );
    }
}

/// ...nor of the next backend unless the route says so (it would be paid twice); when
/// it does, the next backend is tried (it may read fine).
#[tokio::test]
async fn an_unreadable_success_falls_over_only_when_the_route_says_so() {
    let broken = FakeProvider::json(200, "{not json").await;
    let good = FakeProvider::json(
        200,
        r#"{"id":"x","model":"m-b","choices":[{"message":{"content":"Hello!"},"finish_reason":"stop"}]}"#,
    )
    .await;
    let manifests = Manifests::new();
    manifests
        .write(
            "a.yaml",
            &provider_yaml("a", "openai-compatible", &broken.url(), &[("m", "m-a")], ""),
        )
        .write(
            "b.yaml",
            &provider_yaml("b", "openai-compatible", &good.url(), &[("m", "m-b")], ""),
        )
        .write(
            "route.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec:\n  models: [m]\n  backends: [{provider: a, model: m}, {provider: b, model: m, priority: 1}]\n  retry: {attempts: 3, backoff: 10ms}\n",
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let response = post_messages(&proxy, &hello(false)).await;
    assert_eq!(response.status(), 502);
    assert_eq!((broken.received().len(), good.received().len()), (1, 0));

    manifests.write(
        "route.yaml",
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec:\n  models: [m]\n  backends: [{provider: a, model: m}, {provider: b, model: m, priority: 1}]\n  retry: {attempts: 3, backoff: 10ms, fallbackOnUnreadable: true}\n",
    );
    let proxy = proxy_with(&manifests, |_| {}).await;
    let response = post_messages(&proxy, &hello(false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "Hello!", "{body}");
    assert_eq!((broken.received().len(), good.received().len()), (2, 1));
}

/// `POST /v1/embeddings` on the `echo` provider: unit vectors of 8 dimensions (or
/// `dimensions`), the same for the same input (before: 400 "missing field
/// 'messages'", the request was read as a chat request).
#[tokio::test]
async fn echo_embeddings_over_http() {
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIProvider\nmetadata: {name: e}\nspec:\n  type: echo\n  models: [{name: echo}]\n",
        )
        .write("route.yaml", &route_yaml("r", &["emb"], "e", "echo", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let embed = |body: Value| {
        let proxy = &proxy;
        async move {
            let response = post(proxy, "/v1/embeddings", body.to_string()).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let vectors = |body: &Value| -> Vec<Vec<f64>> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, item)| {
                assert_eq!(item["index"], i);
                assert_eq!(item["object"], "embedding");
                item["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let unit = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-4;

    let body =
        embed(json!({"model": "emb", "input": ["hello world", "other", "hello world"]})).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "echo");
    assert_eq!(body["usage"]["prompt_tokens"], 5, "one token a word");
    let first = vectors(&body);
    assert_eq!(first.len(), 3);
    for v in &first {
        assert_eq!(v.len(), 8);
        assert!(unit(v), "{v:?}");
    }
    assert_eq!(first[0], first[2], "same input, same vector");
    assert_ne!(first[0], first[1]);
    // Deterministic across requests.
    let again = vectors(&embed(json!({"model": "emb", "input": "hello world"})).await);
    assert_eq!(again, [first[0].clone()]);

    let sized = vectors(&embed(json!({"model": "emb", "input": "hi", "dimensions": 32})).await);
    assert_eq!(sized[0].len(), 32);
    assert!(unit(&sized[0]));
}
