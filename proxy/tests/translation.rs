//! Translation end to end: OpenAI and Anthropic clients against fake Anthropic, Gemini
//! and OpenAI providers (real HTTP servers on loopback) answering with the providers'
//! documented examples (tests/golden).

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;

fn golden(path: &str) -> String {
    let full = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// A provider answering every request with a golden JSON file.
async fn json_provider(status: u16, path: &str) -> FakeProvider {
    let body = Bytes::from(golden(path));
    FakeProvider::start(move |_| {
        Reply::Json(http::StatusCode::from_u16(status).unwrap(), body.clone())
    })
    .await
}

/// A provider streaming a golden SSE file, one event per write, 2 ms apart.
async fn stream_provider(path: &str) -> FakeProvider {
    let text = golden(path);
    let separator = if text.contains("\r\n\r\n") {
        "\r\n\r\n"
    } else {
        "\n\n"
    };
    let pieces: Vec<(Duration, Bytes)> = text
        .split_inclusive(separator)
        .map(|event| (Duration::from_millis(2), Bytes::from(event.to_string())))
        .collect();
    FakeProvider::start(move |_| Reply::Stream(pieces.clone())).await
}

/// A gateway with model `m` served by `upstream` as a provider of `kind`.
async fn gateway(upstream: &FakeProvider, kind: &str) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml("up", kind, &upstream.url(), &[("m", "up-model")], ""),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

/// POSTs to `/v1/messages` as Anthropic's SDK does: `x-api-key` and `anthropic-version`.
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

/// Server-sent events as (event name, data) pairs.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

/// The JSON chunks of an OpenAI stream, checking it ends with `[DONE]`.
fn openai_chunks(text: &str) -> Vec<Value> {
    let events = sse_events(text);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect()
}

const OPENAI_TOOLS_REQUEST: &str = r#"{
  "model": "m",
  "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the weather in San Francisco?"}
  ],
  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
  "tool_choice": "auto",
  "temperature": 0.2
}"#;

#[tokio::test]
async fn openai_client_gets_an_anthropic_answer_in_openai_format() {
    let upstream = json_provider(200, "anthropic/response_tool_use.json").await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let response = post(&proxy, "/v1/chat/completions", OPENAI_TOOLS_REQUEST).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();

    let sent = upstream.last();
    assert_eq!(sent.uri, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], PROVIDER_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(!sent.headers.contains_key("authorization"));
    let sent = sent.json();
    assert_eq!(sent["model"], "up-model");
    assert_eq!(sent["max_tokens"], 4096, "Anthropic's required max_tokens");
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Be brief."}])
    );
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));

    let documented: Value =
        serde_json::from_str(&golden("anthropic/response_tool_use.json")).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], documented["id"]);
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    let tool_use = documented["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert_eq!(call["id"], tool_use["id"]);
    assert_eq!(call["function"]["name"], tool_use["name"]);
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, tool_use["input"]);
    assert_eq!(
        body["usage"]["completion_tokens"],
        documented["usage"]["output_tokens"]
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn openai_client_streams_an_anthropic_tool_call() {
    let upstream = stream_provider("anthropic/stream_tool_use.sse").await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let mut request: Value = serde_json::from_str(OPENAI_TOOLS_REQUEST).unwrap();
    request["stream"] = true.into();
    request["stream_options"] = json!({"include_usage": true});
    let response = post(&proxy, "/v1/chat/completions", request.to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunks = openai_chunks(&response.text().await.unwrap());
    assert_eq!(upstream.last().json()["stream"], true);

    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
    let mut text = String::new();
    let mut arguments = String::new();
    let mut finish = None;
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if let Some(call) = choice["delta"]["tool_calls"].get(0) {
            assert_eq!(call["index"], 0);
            if call.get("id").is_some() {
                assert_eq!(call["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
                assert_eq!(call["function"]["name"], "get_weather");
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap());
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
    }
    assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 472);
    assert_eq!(usage["usage"]["completion_tokens"], 89);
    proxy.shutdown().await;
}

#[tokio::test]
async fn openai_client_streams_from_gemini() {
    let upstream = stream_provider("gemini/stream_text_crlf.sse").await;
    let (_m, proxy) = gateway(&upstream, "gemini").await;
    let request = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"Capital of Wyoming?"}],"max_tokens":50}"#;
    let response = post(&proxy, "/v1/chat/completions", request).await;
    assert_eq!(response.status(), 200);
    let chunks = openai_chunks(&response.text().await.unwrap());

    let sent = upstream.last();
    assert_eq!(
        sent.uri,
        "/v1/models/up-model:streamGenerateContent?alt=sse"
    );
    assert_eq!(sent.headers["x-goog-api-key"], PROVIDER_KEY);
    let sent = sent.json();
    assert_eq!(
        sent["contents"][0]["parts"][0]["text"],
        "Capital of Wyoming?"
    );
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 50);

    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The capital of Wyoming is **Cheyenne**.\n");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn anthropic_client_gets_a_gemini_function_call() {
    let upstream = json_provider(200, "gemini/response_function_call.json").await;
    let (_m, proxy) = gateway(&upstream, "gemini").await;
    let request = json!({
        "model": "m",
        "max_tokens": 100,
        "system": "You can tell the time.",
        "tools": [{"name": "now", "description": "The time", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "How many days until New Year's Eve?"}]
    });
    let response = post_messages(&proxy, &request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(upstream.last().uri, "/v1/models/up-model:generateContent");
    let sent = upstream.last().json();
    assert_eq!(
        sent["systemInstruction"]["parts"][0]["text"],
        "You can tell the time."
    );
    assert_eq!(sent["tools"][0]["functionDeclarations"][0]["name"], "now");

    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["stop_reason"], "tool_use");
    let block = &body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "now");
    assert_eq!(block["input"], json!({}));
    assert!(block["id"].as_str().unwrap().starts_with("call_"));
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn anthropic_client_streams_an_openai_tool_call() {
    let upstream = stream_provider("openai/stream_tool_calls.sse").await;
    let (_m, proxy) = gateway(&upstream, "openai").await;
    let request = json!({
        "model": "m",
        "max_tokens": 100,
        "stream": true,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}]
    });
    let response = post_messages(&proxy, &request).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();

    let sent = upstream.last();
    assert_eq!(sent.uri, "/v1/chat/completions");
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
    let sent = sent.json();
    assert_eq!(sent["model"], "up-model");
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let mut arguments = String::new();
    for (name, data) in &events {
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data["type"],
            name.as_deref().unwrap(),
            "data type matches the event name"
        );
        match name.as_deref().unwrap() {
            "content_block_start" => {
                assert_eq!(data["content_block"]["type"], "tool_use");
                assert_eq!(data["content_block"]["name"], "get_weather");
            }
            "content_block_delta" => {
                assert_eq!(data["delta"]["type"], "input_json_delta");
                arguments.push_str(data["delta"]["partial_json"].as_str().unwrap());
            }
            "message_delta" => {
                assert_eq!(data["delta"]["stop_reason"], "tool_use");
                assert!(data["usage"]["output_tokens"].as_u64().unwrap() > 0);
            }
            _ => {}
        }
    }
    assert!(
        serde_json::from_str::<Value>(&arguments)
            .unwrap()
            .is_object()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn anthropic_client_passes_through_to_an_anthropic_provider() {
    let upstream = json_provider(200, "anthropic/response_text.json").await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let request: Value = serde_json::from_str(&golden("anthropic/request_tools.json")).unwrap();
    let mut request = request;
    request["model"] = "m".into();
    let response = post_messages(&proxy, &request).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();

    // What went up is the client's request, byte for byte, but the model (no tool
    // result rewritten into blocks, no default temperature: nothing is translated).
    let sent = upstream.last();
    let expected = serde_json::to_string(&request).unwrap().replacen(
        "\"model\":\"m\"",
        "\"model\":\"up-model\"",
        1,
    );
    assert_eq!(std::str::from_utf8(&sent.body).unwrap(), expected);

    // What came back is the provider's answer as it wrote it.
    assert_eq!(body, golden("anthropic/response_text.json"));
    proxy.shutdown().await;
}

/// Provider errors: (provider type, status, golden body, client API) to the status and
/// error type the client gets.
#[tokio::test]
async fn provider_errors_become_the_client_api_format() {
    struct Case {
        kind: &'static str,
        status: u16,
        body: &'static str,
        anthropic_client: bool,
        want_status: u16,
        want_type: &'static str,
        want_message: Option<&'static str>,
    }
    let cases = [
        Case {
            kind: "anthropic",
            status: 529,
            body: "anthropic/error_overloaded.json",
            anthropic_client: false,
            want_status: 503,
            want_type: "server_error",
            want_message: Some("Overloaded"),
        },
        Case {
            kind: "anthropic",
            status: 529,
            body: "anthropic/error_overloaded.json",
            anthropic_client: true,
            want_status: 529,
            want_type: "overloaded_error",
            want_message: Some("Overloaded"),
        },
        Case {
            kind: "anthropic",
            status: 429,
            body: "anthropic/error_rate_limit.json",
            anthropic_client: false,
            want_status: 429,
            want_type: "rate_limit_error",
            want_message: None,
        },
        Case {
            kind: "anthropic",
            status: 429,
            body: "anthropic/error_rate_limit.json",
            anthropic_client: true,
            want_status: 429,
            want_type: "rate_limit_error",
            want_message: None,
        },
        Case {
            kind: "anthropic",
            status: 400,
            body: "anthropic/error_invalid_request.json",
            anthropic_client: false,
            want_status: 400,
            want_type: "invalid_request_error",
            want_message: None,
        },
        Case {
            kind: "anthropic",
            status: 401,
            body: "anthropic/error_invalid_request.json",
            anthropic_client: true,
            want_status: 502,
            want_type: "api_error",
            want_message: Some("credentials"),
        },
        Case {
            kind: "gemini",
            status: 400,
            body: "gemini/error_400.json",
            anthropic_client: false,
            want_status: 502,
            want_type: "upstream_error",
            want_message: Some("credentials"),
        },
        Case {
            kind: "gemini",
            status: 429,
            body: "gemini/error_429.json",
            anthropic_client: true,
            want_status: 429,
            want_type: "rate_limit_error",
            want_message: None,
        },
        Case {
            kind: "gemini",
            status: 503,
            body: "gemini/error_503.json",
            anthropic_client: false,
            want_status: 503,
            want_type: "server_error",
            want_message: Some("The model is overloaded"),
        },
        Case {
            kind: "gemini",
            status: 500,
            body: "gemini/error_503.json",
            anthropic_client: true,
            want_status: 502,
            want_type: "api_error",
            want_message: Some("status 500"),
        },
    ];
    for case in cases {
        let body = Bytes::from(golden(case.body));
        let status = case.status;
        let upstream = FakeProvider::start(move |_| {
            Reply::Json(http::StatusCode::from_u16(status).unwrap(), body.clone())
        })
        .await;
        let (_m, proxy) = gateway(&upstream, case.kind).await;
        let response = if case.anthropic_client {
            post_messages(&proxy, &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})).await
        } else {
            post(
                &proxy,
                "/v1/chat/completions",
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            )
            .await
        };
        let label = format!(
            "{} {} -> {}",
            case.kind,
            case.status,
            if case.anthropic_client {
                "anthropic"
            } else {
                "openai"
            }
        );
        assert_eq!(response.status().as_u16(), case.want_status, "{label}");
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        assert_eq!(error["type"], case.want_type, "{label}: {body}");
        if case.anthropic_client {
            assert_eq!(body["type"], "error", "{label}");
        }
        let message = error["message"].as_str().unwrap();
        if let Some(want) = case.want_message {
            assert!(message.contains(want), "{label}: {message}");
        }
        assert!(
            !message.contains("key1234") && !message.contains(PROVIDER_KEY),
            "{label}"
        );
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn retry_after_reaches_the_client() {
    // FakeProvider sends no Retry-After; a raw HTTP/1.1 server on loopback does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let _ = socket.read(&mut buf).await;
            let body = golden("anthropic/error_rate_limit.json");
            let reply = format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 7\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml(
                "up",
                "anthropic",
                &format!("http://{addr}/v1"),
                &[("m", "up-model")],
                "",
            ),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    let response = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let response = post_messages(
        &proxy,
        &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_mid_stream_provider_error_ends_the_client_stream_with_an_error_event() {
    let upstream = stream_provider("anthropic/stream_error_midstream.sse").await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;

    let request = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let text = post(&proxy, "/v1/chat/completions", request)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let (_, last) = events.last().unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["code"], "overloaded", "{text}");
    assert!(
        !text.contains("[DONE]"),
        "an error is not a normal end: {text}"
    );

    let request = json!({"model": "m", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let text = post_messages(&proxy, &request).await.text().await.unwrap();
    let events = sse_events(&text);
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"));
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(!text.contains("message_stop"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_translated_stream_cut_by_the_provider_ends_with_an_error_event() {
    let first = golden("anthropic/stream_text.sse")
        .split("\n\n")
        .next()
        .unwrap()
        .to_string()
        + "\n\n";
    let upstream = FakeProvider::start(move |_| Reply::CutAfter(Bytes::from(first.clone()))).await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let request = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let text = post(&proxy, "/v1/chat/completions", request)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    assert_eq!(events.len(), 2, "{text}");
    let error: Value = serde_json::from_str(&events[1].1).unwrap();
    assert_eq!(error["error"]["code"], "upstream_stream_error");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_first_token_is_not_held_back() {
    let (upstream, feed) = FakeProvider::held().await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let request = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let documented = golden("anthropic/stream_text.sse");
    let mut events = documented.split_inclusive("\n\n");
    // message_start, content_block_start, ping, the first text delta. (The proxy
    // answers once the stream's first event is in: until then it may fail over.)
    for event in events.by_ref().take(4) {
        feed.send(Bytes::from(event.to_string())).await.unwrap();
    }
    let response = post(&proxy, "/v1/chat/completions", request).await;
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"Hello\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the first token arrives while the provider holds the rest")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    for event in events {
        feed.send(Bytes::from(event.to_string())).await.unwrap();
    }
    drop(feed);
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn what_a_provider_cannot_express_is_a_400_in_the_client_format() {
    let upstream = json_provider(200, "anthropic/response_text.json").await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    for (request, expected) in [
        (
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true}"#,
            "'logprobs'",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
            "response_format",
        ),
        (r#"{"model":"m","input":"hi"}"#, "no embeddings API"),
    ] {
        let path = if request.contains("input") {
            "/v1/embeddings"
        } else {
            "/v1/chat/completions"
        };
        let message = assert_error(post(&proxy, path, request).await, 400, "invalid_request").await;
        assert!(message.contains(expected), "{message}");
    }
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the provider"
    );
    proxy.shutdown().await;

    // Anthropic-only fields are refused for a provider of another API (they pass
    // through to Anthropic providers: see anthropic_native.rs).
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible").await;
    let response = post_messages(&proxy, &json!({"model": "m", "max_tokens": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'thinking'")
    );
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the provider"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn messages_endpoint_errors_are_in_anthropic_format() {
    // A provider that translates: the gateway reads the request and judges it (an
    // Anthropic provider judges the requests passed through to it).
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible").await;
    let no_key = client()
        .post(url(&proxy, "/v1/messages"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let body: Value = no_key.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");

    for (request, status, type_) in [
        (
            json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": []}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "m", "max_tokens": "five", "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "y", "input": {}}]}]}),
            400,
            "invalid_request_error",
        ),
    ] {
        let response = post_messages(&proxy, &request).await;
        assert_eq!(response.status().as_u16(), status, "{request}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], type_, "{request}: {body}");
    }
    let get = client()
        .get(url(&proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.json::<Value>().await.unwrap()["type"], "error");
    proxy.shutdown().await;
}
