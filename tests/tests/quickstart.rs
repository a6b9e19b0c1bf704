//! The quickstart as a user runs it: the real `examples/quickstart` directory, curl-like
//! requests, and the README's Python client with the OpenAI SDK.

use std::time::Duration;

use serde_json::Value;
use switchboard_e2e::{
    Proxy, QUICKSTART_KEY, SseReader, StreamSummary, assert_openai_error, chat, http_client,
    read_stream, request_id, run_command, workspace_root,
};

#[tokio::test]
async fn quickstart_serves_openai_clients() {
    let dir = workspace_root().join("examples/quickstart");
    let proxy = Proxy::start(&dir, &[]).await;
    let client = http_client();

    // A whole reply echoes the prompt.
    let prompt = "Hello, Switchboard!";
    let response = chat(&client, &proxy, QUICKSTART_KEY, "echo", prompt, false).await;
    assert_eq!(response.status(), 200);
    request_id(&response);
    let body: Value = response.json().await.expect("chat reply is JSON");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], prompt);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // The alias works too.
    let response = chat(
        &client,
        &proxy,
        QUICKSTART_KEY,
        "fast",
        "via the alias",
        false,
    )
    .await;
    assert_eq!(response.status(), 200);
    request_id(&response);
    let body: Value = response.json().await.expect("chat reply is JSON");
    assert_eq!(body["choices"][0]["message"]["content"], "via the alias");

    // A stream carries the prompt word by word and ends with [DONE].
    let prompt = "the quick brown fox jumps over the lazy dog";
    let response = chat(&client, &proxy, QUICKSTART_KEY, "echo", prompt, true).await;
    assert_eq!(response.status(), 200);
    request_id(&response);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type}"
    );
    let mut reader = SseReader::new(response);
    let mut stream = StreamSummary::default();
    read_stream(&mut reader, &mut stream).await;
    assert!(!stream.broken, "stream broke: {:?}", stream.events);
    assert_eq!(stream.text, prompt, "events: {:?}", stream.events);
    assert!(
        stream.done,
        "stream did not end with [DONE]: {:?}",
        stream.events
    );
    assert!(
        stream.events.len() > prompt.split_whitespace().count(),
        "expected one event per word: {:?}",
        stream.events
    );

    // The model list has the route's names.
    let response = client
        .get(proxy.url("/v1/models"))
        .bearer_auth(QUICKSTART_KEY)
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(response.status(), 200);
    request_id(&response);
    let body: Value = response.json().await.expect("model list is JSON");
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for model in ["echo", "fast"] {
        assert!(ids.contains(&model), "{model} missing from {ids:?}");
    }

    // A wrong key is refused in OpenAI's error format, on every endpoint.
    let bad_key = "sk-not-the-quickstart-key";
    let response = chat(&client, &proxy, bad_key, "echo", "hi", false).await;
    assert_eq!(response.status(), 401);
    request_id(&response);
    let body: Value = response.json().await.expect("error is JSON");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "invalid_api_key");
    let response = client
        .get(proxy.url("/v1/models"))
        .bearer_auth(bad_key)
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(response.status(), 401);
    request_id(&response);
    assert_openai_error(&response.json().await.expect("error is JSON"));

    // No key at all.
    let response = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&switchboard_e2e::chat_body("echo", "hi", false))
        .send()
        .await
        .expect("send chat request");
    assert_eq!(response.status(), 401);
    request_id(&response);
    assert_openai_error(&response.json().await.expect("error is JSON"));

    // Probes answer and carry a request id too.
    for path in ["/healthz", "/readyz"] {
        let response = client.get(proxy.url(path)).send().await.expect("probe");
        assert_eq!(response.status(), 200, "{path}");
        request_id(&response);
    }

    // A client-sent request id comes back unchanged.
    let response = client
        .get(proxy.url("/v1/models"))
        .bearer_auth(QUICKSTART_KEY)
        .header("x-request-id", "e2e-request-1")
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(request_id(&response), "e2e-request-1");
}

#[tokio::test]
async fn quickstart_python_client_works() {
    run_python_client(
        "openai",
        "\"openai>=1.40,<4\"",
        "client.py",
        "/v1",
        &["reply: Hello, Switchboard!", "stream: Streaming works too."],
    )
    .await;
}

/// The Anthropic SDK through `/v1/messages`: its stream helper assembles the events
/// into a final message, so a malformed event sequence fails here.
#[tokio::test]
async fn quickstart_anthropic_sdk_client_works() {
    run_python_client(
        "anthropic",
        "\"anthropic>=0.40,<3\"",
        "anthropic_client.py",
        "",
        &[
            "reply: Hello from the Anthropic SDK! (end_turn)",
            "stream: Streaming cuts at (max_tokens, 3 output tokens)",
        ],
    )
    .await;
}

/// How long a Python step may take. Importing an SDK alone (pydantic, httpx) takes
/// seconds on a cold, busy 2-core machine running the rest of the suite beside it; the
/// bound is there to stop a hang, not to time anything.
const PYTHON_WITHIN: Duration = Duration::from_secs(90);

/// Runs `examples/quickstart/{script}` (which needs Python `module`) against a
/// quickstart proxy at `base_path`, and checks its output has each of `expected`.
async fn run_python_client(
    module: &str,
    requirement: &str,
    script: &str,
    base_path: &str,
    expected: &[&str],
) {
    let import = run_command(
        {
            let mut command = tokio::process::Command::new("python3");
            command.args(["-c", &format!("import {module}")]);
            command
        },
        PYTHON_WITHIN,
    )
    .await;
    assert!(
        import.status.success(),
        "the Python SDK '{module}' is not installed; install it with: \
         python3 -m pip install {requirement}\n{}",
        String::from_utf8_lossy(&import.stderr)
    );

    let root = workspace_root();
    let proxy = Proxy::start(&root.join("examples/quickstart"), &[]).await;
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(root.join("examples/quickstart").join(script))
        .env("SWITCHBOARD_URL", proxy.url(base_path))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY");
    let output = run_command(command, PYTHON_WITHIN).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nproxy:\n{}",
        output.status,
        proxy.logs()
    );
    for line in expected {
        assert!(
            stdout.contains(line),
            "{script} did not print {line:?}:\n{stdout}"
        );
    }
}
