//! No key leaks, whatever happens: a whole scenario runs with distinctive fake keys and
//! then every byte it produced is searched for them.
//!
//! The scenario: an operator and a proxy (body logging on, debug logs) against the API
//! emulator. There is a provider of every type, each with its own key. One set of
//! providers answers normally (whole and streamed), another is a hostile upstream that
//! echoes every header and the URL it received (keys included) into a 400 or a 500
//! error. A third set answers in each provider's own format (whole and streamed) with
//! the keys where a gateway might miss them: in an error event mid-stream, after
//! character 1,000 of a long error message, written with JSON `\u` escapes, and in a
//! successful answer's text. The client uses good and wrong gateway keys,
//! `/v1/messages` too. Then the
//! scan: every response body and header the clients got, the proxy's and the
//! operator's logs, both metrics pages and the operator's debug endpoints. The one
//! place keys are meant to be is the proxy's snapshot cache file (mode 0600), which is
//! checked for its mode instead.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use switchboard_e2e::cluster::Cluster;
use switchboard_e2e::fake_upstream::{FakeUpstream, json_response};
use switchboard_e2e::{Proxy, TempDir, http_client, request_id};
use tokio::net::TcpListener;

const NS: &str = "scan";
const GATEWAY_KEY: &str = "sk-SCANgatewayKEY-7f3a9c2e5b1d4a60";
const WRONG_KEY: &str = "sk-SCANwrongKEY-0c9e8d7f6a5b4c3d";
/// Provider type, and its key.
const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "sk-SCANopenaiKEY-1a2b3c4d5e6f7081"),
    ("azure-openai", "SCANazureKEY92b83c74d65e56f4"),
    ("anthropic", "sk-ant-SCANanthropicKEY-a1b2c3d4"),
    ("gemini", "AIzaSCANgeminiKEY-e5f6a7b8c9d0e1f2"),
    ("openai-compatible", "sk-SCANcompatKEY-3c4d5e6f7a8b9c0d"),
];

/// An upstream that gives keys away: every request gets an error whose message holds
/// every header value and the URL it received. `status` 400 (passed on to clients as
/// the provider's error) or 500.
async fn hostile_upstream(status: u16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let mut seen = request.uri().to_string();
                    for value in request.headers().values() {
                        seen.push(' ');
                        seen.push_str(&String::from_utf8_lossy(value.as_bytes()));
                    }
                    // OpenAI's, Anthropic's and Google's error shapes all at once.
                    let body = json!({
                        "type": "error",
                        "error": {"message": format!("Incorrect API key provided: {seen}"),
                                  "type": "invalid_request_error", "code": status, "status": "INVALID_ARGUMENT"}
                    });
                    let response = json_response(status, body.to_string());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/v1")
}

/// How a `tricky_upstream` gives keys away.
#[derive(Clone, Copy, PartialEq)]
enum Trick {
    /// Streams start well, then an error event holds the keys (whole answers: a 500).
    MidStreamError,
    /// A 400 whose message holds the keys from character 1,001.
    LongMessage,
    /// A 400 whose message holds the keys, the first character of each header value
    /// written as a JSON `\u` escape.
    Escaped,
    /// A successful answer, whole or streamed, whose text holds the keys.
    EchoAnswer,
}

/// An upstream that answers every provider type in its own format (told apart by the
/// path: `/messages` is Anthropic, `generateContent` Gemini, anything else OpenAI)
/// and gives away the keys it received as `trick` says.
async fn tricky_upstream(trick: Trick) -> String {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    service_fn(move |request: Request<hyper::body::Incoming>| async move {
                        let path = request.uri().to_string();
                        let mut seen = path.clone();
                        let mut escaped = String::new();
                        let mut credentials = String::new();
                        for (name, value) in request.headers() {
                            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                            seen.push(' ');
                            seen.push_str(&value);
                            if ["authorization", "x-api-key", "api-key", "x-goog-api-key"]
                                .contains(&name.as_str())
                            {
                                credentials.push(' ');
                                credentials.push_str(value.trim_start_matches("Bearer "));
                            }
                            // Each word's first character as a `\u` escape, the rest
                            // JSON-escaped as serde would, without the quotes.
                            for word in value.split(' ') {
                                let mut chars = word.chars();
                                escaped.push(' ');
                                if let Some(first) = chars.next() {
                                    escaped.push_str(&format!("\\u{:04x}", u32::from(first)));
                                }
                                let rest = json!(chars.as_str()).to_string();
                                escaped.push_str(&rest[1..rest.len() - 1]);
                            }
                        }
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let api = if path.contains("/messages") {
                            "anthropic"
                        } else if path.contains("generateContent") {
                            "gemini"
                        } else {
                            "openai"
                        };
                        let stream = path.contains("streamGenerateContent")
                            || serde_json::from_slice::<Value>(&body).unwrap_or_default()["stream"]
                                == json!(true);
                        let error = |status: u16, message: String| {
                            json!({"type": "error",
                               "error": {"message": message, "type": "invalid_request_error",
                                         "code": status, "status": "INVALID_ARGUMENT"}})
                            .to_string()
                        };
                        let response = match trick {
                            Trick::LongMessage => json_response(
                                400,
                                error(400, format!("{}{credentials}", "x".repeat(1000))),
                            ),
                            Trick::Escaped => {
                                // The escapes are written by hand: serde would escape the
                                // backslash.
                                let body = error(400, "ESCAPED".to_string()).replace(
                                    "ESCAPED",
                                    &format!("Incorrect API key provided: {escaped}"),
                                );
                                json_response(400, body)
                            }
                            Trick::MidStreamError if !stream => {
                                json_response(500, error(500, seen))
                            }
                            Trick::MidStreamError => sse_response(api, &seen, true),
                            Trick::EchoAnswer if stream => sse_response(api, &seen, false),
                            Trick::EchoAnswer => json_response(200, answer(api, &seen)),
                        };
                        Ok::<_, Infallible>(response)
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/v1")
}

/// A whole answer of `api` whose text is `text`.
fn answer(api: &str, text: &str) -> String {
    match api {
        "anthropic" => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "up-model",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1}
        }),
        "gemini" => json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}
        }),
        _ => json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }),
    }
    .to_string()
}

/// A stream of `api` with `text` in one event: an error event mid-stream if `error`,
/// otherwise the answer's text in a complete stream.
fn sse_response(
    api: &str,
    text: &str,
    error: bool,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let events: Vec<(Option<&str>, Value)> = match api {
        "anthropic" => {
            let start = json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "up-model",
                "content": [], "usage": {"input_tokens": 1, "output_tokens": 0}}});
            let block = json!({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}});
            let delta = |t: &str| {
                json!({"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": t}})
            };
            if error {
                vec![
                    (Some("message_start"), start),
                    (Some("content_block_start"), block),
                    (Some("content_block_delta"), delta("hi")),
                    (
                        Some("error"),
                        json!({"type": "error",
                                          "error": {"type": "api_error", "message": text}}),
                    ),
                ]
            } else {
                vec![
                    (Some("message_start"), start),
                    (Some("content_block_start"), block),
                    (Some("content_block_delta"), delta(text)),
                    (
                        Some("content_block_stop"),
                        json!({"type": "content_block_stop", "index": 0}),
                    ),
                    (
                        Some("message_delta"),
                        json!({"type": "message_delta",
                        "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
                    ),
                    (Some("message_stop"), json!({"type": "message_stop"})),
                ]
            }
        }
        "gemini" => {
            let chunk = |t: &str, finish: Option<&str>| {
                json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": t}]},
                                "finishReason": finish}],
                "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}})
            };
            if error {
                vec![
                    (None, chunk("hi", None)),
                    (
                        None,
                        json!({"error": {"code": 500, "message": text, "status": "INTERNAL"}}),
                    ),
                ]
            } else {
                vec![(None, chunk(text, Some("STOP")))]
            }
        }
        _ => {
            let chunk = |t: &str| {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "created": 1, "model": "up-model",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": t},
                             "finish_reason": null}]})
            };
            if error {
                vec![
                    (None, chunk("hi")),
                    (
                        None,
                        json!({"error": {"message": text, "type": "server_error"}}),
                    ),
                ]
            } else {
                vec![
                    (None, chunk(text)),
                    (
                        None,
                        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                        "created": 1, "model": "up-model",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
                    ),
                ]
            }
        }
    };
    let mut body = String::new();
    for (event, data) in events {
        if let Some(event) = event {
            body.push_str(&format!("event: {event}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    if api == "openai" && !error {
        body.push_str("data: [DONE]\n\n");
    }
    let mut response = json_response(200, body);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

fn secret(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"key": value}
    })
}

/// A provider of `kind` named `name` at `endpoint`, with its key, serving model `m`.
fn provider(name: &str, kind: &str, endpoint: &str) -> Value {
    let mut spec = json!({
        "type": kind,
        "endpoint": endpoint,
        "auth": {"secretRef": {"name": format!("{kind}-key"), "key": "key"}},
        "models": [{"name": "m", "upstreamName": "up-model"}]
    });
    if kind == "azure-openai" {
        spec["azure"] = json!({"apiVersion": "2024-10-21"});
    }
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIProvider",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec
    })
}

fn route(name: &str, provider: &str) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIRoute",
        "metadata": {"name": name, "namespace": NS},
        // One attempt: the errors reach the client as they are.
        "spec": {"models": [name], "backends": [{"provider": provider, "model": "m"}],
                 "retry": {"attempts": 1}}
    })
}

/// Waits (bounded) until the proxy's JSON log has an access line (`"message":
/// "request"`) for every id in `ids`: each request's line is written when it ends, a
/// stream's after its last byte.
async fn wait_for_access_lines(proxy: &Proxy, ids: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logs = proxy.logs();
        let logged: BTreeSet<String> = logs
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["message"] == "request")
            .filter_map(|line| line["request_id"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<&String> = ids.difference(&logged).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no access line within 15s for {} of {} requests, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a client saw of one response: status line, headers and body.
async fn seen(response: reqwest::Response) -> String {
    let mut out = format!("{}\n", response.status());
    for (name, value) in response.headers() {
        out.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push_str(&response.text().await.unwrap_or_default());
    out
}

#[tokio::test]
async fn no_key_appears_in_any_response_log_metric_or_debug_page() {
    let cluster = Cluster::start().await;
    let good = FakeUpstream::start().await;
    let refusing = hostile_upstream(400).await;
    let failing = hostile_upstream(500).await;
    let mid_stream = tricky_upstream(Trick::MidStreamError).await;
    let long = tricky_upstream(Trick::LongMessage).await;
    let escaped = tricky_upstream(Trick::Escaped).await;
    let echoing = tricky_upstream(Trick::EchoAnswer).await;
    cluster.api.apply(secret("gateway-key", GATEWAY_KEY));
    cluster.api.apply(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AIConsumer",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"keys": [{"secretRef": {"name": "gateway-key", "key": "key"}}]}
    }));
    let mut models = Vec::new();
    for (kind, key) in PROVIDERS {
        cluster.api.apply(secret(&format!("{kind}-key"), key));
        for (flavour, endpoint) in [
            ("good", good.endpoint()),
            ("refusing", refusing.clone()),
            ("failing", failing.clone()),
            ("mid-stream", mid_stream.clone()),
            ("long", long.clone()),
            ("escaped", escaped.clone()),
            ("echoing", echoing.clone()),
        ] {
            let name = format!("{kind}-{flavour}");
            cluster.api.apply(provider(&name, kind, &endpoint));
            cluster.api.apply(route(&name, &name));
            models.push(name);
        }
    }

    let operator = cluster.operator("operator-scan").await;
    let state = TempDir::new("scan-state");
    let cache = state.path().join("snapshot.json");
    let mut args = cluster.proxy_args("proxy-scan", &operator.config_url(), &cache);
    args.extend([
        "--log-bodies".to_string(),
        "--log-format".to_string(),
        "json".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start_args(&args, &[("RUST_LOG", "debug")]).await;
    for name in &models {
        cluster
            .wait_condition(
                ("AIRoute", NS, name),
                "Programmed",
                "True",
                Duration::from_secs(15),
            )
            .await;
    }

    let client = http_client();
    let mut responses = String::new();
    let mut request_ids = BTreeSet::new();
    for model in &models {
        for stream in [false, true] {
            for key in [GATEWAY_KEY, WRONG_KEY] {
                let response = client
                    .post(proxy.url("/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&json!({"model": model, "stream": stream,
                                  "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                request_ids.insert(request_id(&response));
                responses.push_str(&seen(response).await);
            }
            let response = client
                .post(proxy.url("/v1/messages"))
                .header("x-api-key", GATEWAY_KEY)
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": model, "max_tokens": 16, "stream": stream,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            request_ids.insert(request_id(&response));
            responses.push_str(&seen(response).await);
        }
    }
    assert_eq!(request_ids.len(), models.len() * 6, "one id per request");
    // The scenario did what it says: answers, the provider's own 400s, and 502s.
    for status in [
        "200 OK",
        "400 Bad Request",
        "401 Unauthorized",
        "502 Bad Gateway",
    ] {
        assert!(responses.contains(status), "no {status} in the scenario");
    }
    // The tricky upstreams' keys reached the proxy and were taken out: each trick's
    // marker is in some answer (a 200 with the echoed text, an error event, a 400).
    assert!(responses.contains("[redacted]"), "nothing was redacted");
    assert!(responses.contains(&"x".repeat(1000)), "no long message");
    // The hostile upstreams did receive the keys they tried to give away.
    assert!(good.keys().iter().any(|k| k.contains("SCANopenaiKEY")));

    let mut output = responses;
    for url in [proxy.metrics_url(), operator.admin_url("/metrics")] {
        output.push_str(&client.get(url).send().await.unwrap().text().await.unwrap());
    }
    for path in ["/debug/proxies", "/debug/config"] {
        output.push_str(&operator.admin_text(path).await);
    }
    // Scan the logs once every request's access line is in them.
    wait_for_access_lines(&proxy, &request_ids).await;
    output.push_str(&proxy.logs());
    output.push_str(&operator.process.logs());
    assert!(
        proxy.logs().contains("\"message\":\"request\""),
        "access lines were written"
    );

    let token = cluster.pki.token().trim().to_string();
    let mut keys: Vec<(String, &str)> = PROVIDERS
        .iter()
        .map(|(kind, key)| (format!("{kind} provider key"), *key))
        .collect();
    keys.extend([
        ("gateway key".to_string(), GATEWAY_KEY),
        ("wrong gateway key".to_string(), WRONG_KEY),
        ("operator token".to_string(), token.as_str()),
    ]);
    for (what, key) in keys {
        // The whole key, and its distinctive middle (a key cut or masked at the ends).
        let middle = &key[key.len() / 4..key.len() * 3 / 4];
        for needle in [key, middle] {
            if let Some(at) = output.find(needle) {
                let start = output[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                panic!(
                    "the {what} appears in the output: ...{}...",
                    &output[start..(at + needle.len()).min(output.len())]
                );
            }
        }
    }

    // The snapshot cache holds the provider keys by design, readable by its owner only.
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "snapshot cache mode {mode:o}");
}
