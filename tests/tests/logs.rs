//! `--log-format json`: every line is JSON, each request gets an access line with its
//! identity, and no key (gateway or provider) ever reaches the logs.

use serde_json::Value;
use switchboard_e2e::{
    Proxy, TempDir, chat, consumer, echo_provider, free_port, http_client, request_id, route,
};

const GATEWAY_KEY: &str = "sk-e2e-gateway-key-logs-0001";
const PROVIDER_KEY: &str = "sk-provider-secret-value-123";
const WRONG_KEY: &str = "sk-e2e-wrong-key-logs-9999";

fn manifests() -> TempDir {
    let dir = TempDir::new("logs");
    dir.write("echo.yaml", &echo_provider("echo", "0ms", "0ms"));
    dir.write("routes.yaml", &route("echo", &["echo"], "echo", "echo-1"));
    // An OpenAI-compatible provider on a loopback port nobody listens on: every request
    // to it fails with 502 after the proxy has used its key.
    let closed_port = free_port();
    dir.write(
        "upstream.yaml",
        &format!(
            "apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata:
  name: down
spec:
  type: openai-compatible
  endpoint: http://127.0.0.1:{closed_port}/v1
  auth:
    secretRef:
      name: down-credentials
      key: apiKey
  timeouts:
    connect: 2s
    request: 5s
  models:
    - name: model-1
---
apiVersion: v1
kind: Secret
metadata:
  name: down-credentials
type: Opaque
stringData:
  apiKey: {PROVIDER_KEY}
---
{}",
            route("down", &["down"], "down", "model-1")
        ),
    );
    dir.write("consumer.yaml", &consumer("logs-app", GATEWAY_KEY));
    dir
}

/// Every output line parsed as JSON; panics on a line that is not.
fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("log line is not JSON ({e}): {line}\nall output:\n{logs}")
            })
        })
        .collect()
}

/// The access line for `request_id`.
fn access_line<'a>(lines: &'a [Value], request_id: &str) -> Option<&'a Value> {
    lines.iter().find(|line| {
        let is_access = line["target"] == "switchboard::access" || line["message"] == "request";
        is_access && line["request_id"] == request_id
    })
}

fn assert_no_keys(logs: &str) {
    for (what, key) in [
        ("gateway key", GATEWAY_KEY),
        ("provider key", PROVIDER_KEY),
        ("wrong gateway key", WRONG_KEY),
    ] {
        assert!(
            !logs.contains(key),
            "the {what} appears in the logs:\n{logs}"
        );
    }
}

/// Waits until the access line for `id` is written (lines are written after the
/// response), returning all parsed lines.
async fn wait_for_access_line(proxy: &Proxy, id: &str) -> Vec<Value> {
    proxy
        .wait_for_log_line(0, &[id, "\"request\""], std::time::Duration::from_secs(5))
        .await;
    json_lines(&proxy.logs())
}

#[tokio::test]
async fn json_logs_have_access_lines_and_no_keys() {
    let dir = manifests();
    let proxy = Proxy::start(dir.path(), &["--log-format", "json"]).await;
    let client = http_client();

    let response = chat(
        &client,
        &proxy,
        GATEWAY_KEY,
        "echo",
        "log this request",
        false,
    )
    .await;
    assert_eq!(response.status(), 200);
    let ok_id = request_id(&response);
    response.bytes().await.expect("read body");

    let lines = wait_for_access_line(&proxy, &ok_id).await;
    let line = access_line(&lines, &ok_id)
        .unwrap_or_else(|| panic!("no access line for {ok_id} in:\n{}", proxy.logs()));
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["model"], "echo", "{line}");
    let consumer = line["consumer"].as_str().unwrap_or_default();
    assert!(
        consumer.contains("logs-app"),
        "consumer {consumer:?} in {line}"
    );
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line.get("timestamp").is_some(), "{line}");
    assert!(
        line.get("request_body").is_none() && line.get("response_body").is_none(),
        "bodies are logged only when asked: {line}"
    );
    assert_eq!(
        line["unpriced"], true,
        "the echo model here has no prices: {line}"
    );
    assert!(line.get("cost_usd").is_none(), "{line}");

    // A request to the unreachable provider: 502, and the provider key stays out.
    let response = chat(
        &client,
        &proxy,
        GATEWAY_KEY,
        "down",
        "this fails upstream",
        false,
    )
    .await;
    assert_eq!(response.status(), 502);
    let failed_id = request_id(&response);
    let body: Value = response.json().await.expect("error is JSON");
    let body_text = body.to_string();
    assert!(
        !body_text.contains(PROVIDER_KEY),
        "the provider key is in the response: {body_text}"
    );
    let lines = wait_for_access_line(&proxy, &failed_id).await;
    let line = access_line(&lines, &failed_id)
        .unwrap_or_else(|| panic!("no access line for {failed_id} in:\n{}", proxy.logs()));
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["model"], "down", "{line}");
    assert!(
        line["consumer"]
            .as_str()
            .unwrap_or_default()
            .contains("logs-app"),
        "{line}"
    );

    // The same as a stream.
    let response = chat(
        &client,
        &proxy,
        GATEWAY_KEY,
        "down",
        "this fails upstream",
        true,
    )
    .await;
    assert_eq!(response.status(), 502);
    let stream_id = request_id(&response);
    response.bytes().await.expect("read body");
    wait_for_access_line(&proxy, &stream_id).await;

    // A wrong key: 401, logged without the key.
    let response = chat(&client, &proxy, WRONG_KEY, "echo", "who am I", false).await;
    assert_eq!(response.status(), 401);
    let wrong_id = request_id(&response);
    let lines = wait_for_access_line(&proxy, &wrong_id).await;
    let line = access_line(&lines, &wrong_id)
        .unwrap_or_else(|| panic!("no access line for {wrong_id} in:\n{}", proxy.logs()));
    assert_eq!(line["status"], 401, "{line}");

    let logs = proxy.logs();
    json_lines(&logs);
    assert_no_keys(&logs);
}

/// The same at the most verbose level, where libraries log too.
#[tokio::test]
async fn no_keys_in_trace_logs() {
    let dir = manifests();
    let proxy = Proxy::start_with_env(
        dir.path(),
        &["--log-format", "json"],
        &[("RUST_LOG", "trace")],
    )
    .await;
    let client = http_client();

    let response = chat(
        &client,
        &proxy,
        GATEWAY_KEY,
        "echo",
        "log this request",
        true,
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    response.bytes().await.expect("read body");
    wait_for_access_line(&proxy, &id).await;

    let response = chat(
        &client,
        &proxy,
        GATEWAY_KEY,
        "down",
        "this fails upstream",
        false,
    )
    .await;
    assert_eq!(response.status(), 502);
    let id = request_id(&response);
    response.bytes().await.expect("read body");
    wait_for_access_line(&proxy, &id).await;

    let logs = proxy.logs();
    json_lines(&logs);
    assert_no_keys(&logs);
}

/// Cost and time to first token on every access line; prompts and completions only with
/// `--log-bodies`, cut at `--log-body-max-bytes`.
#[tokio::test]
async fn access_lines_carry_cost_first_token_and_bodies_when_asked() {
    let dir = TempDir::new("logs-bodies");
    dir.write(
        "echo.yaml",
        "apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {name: echo}
spec:
  type: echo
  models:
    - name: echo-1
      pricing: {inputPerMillion: 1000, outputPerMillion: 2000}
",
    );
    dir.write("routes.yaml", &route("echo", &["echo"], "echo", "echo-1"));
    dir.write("consumer.yaml", &consumer("logs-app", GATEWAY_KEY));
    let proxy = Proxy::start(
        dir.path(),
        &[
            "--log-format",
            "json",
            "--log-bodies",
            "--log-body-max-bytes",
            "64",
        ],
    )
    .await;
    let client = http_client();
    let prompt = "a prompt long enough to be cut at sixty-four bytes by the access log";

    let response = chat(&client, &proxy, GATEWAY_KEY, "echo", prompt, false).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    let lines = wait_for_access_line(&proxy, &id).await;
    let line = access_line(&lines, &id).unwrap();
    let usage = &body["usage"];
    let cost = (usage["prompt_tokens"].as_f64().unwrap() * 1000.0
        + usage["completion_tokens"].as_f64().unwrap() * 2000.0)
        / 1e6;
    let logged = line["cost_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("cost_usd in {line}"));
    assert!((logged - cost).abs() < 1e-12, "{logged} vs {cost}: {line}");
    assert!(line.get("unpriced").is_none(), "{line}");
    assert!(
        line.get("ttft_ms").is_none(),
        "whole responses have no first token: {line}"
    );
    let request_body = line["request_body"].as_str().unwrap();
    assert_eq!(request_body.len(), 64, "{line}");
    assert!(
        r#"{"model":"echo""#.starts_with(&request_body[..10]),
        "{line}"
    );
    assert_eq!(line["request_body_truncated"], true, "{line}");
    assert!(
        line["response_body"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"id":"#),
        "{line}"
    );

    // A stream: its first token's time, and its events as sent.
    let response = chat(&client, &proxy, GATEWAY_KEY, "echo", "hi", true).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    response.bytes().await.unwrap();
    let lines = wait_for_access_line(&proxy, &id).await;
    let line = access_line(&lines, &id).unwrap();
    let ttft = line["ttft_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("ttft_ms in {line}"));
    assert!(
        ttft > 0.0 && ttft <= line["latency_ms"].as_f64().unwrap(),
        "{line}"
    );
    assert!(
        line["response_body"]
            .as_str()
            .unwrap()
            .starts_with("data: {"),
        "{line}"
    );
    assert!(
        line["cost_usd"].as_f64().unwrap() > 0.0,
        "streams are priced: {line}"
    );
    assert_no_keys(&proxy.logs());
}

/// A log pipe nobody reads (a stalled collector): stdout fills after 64 KiB, yet every
/// request is answered at once, and the lines that did not fit are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_pipe_costs_log_lines_not_requests() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = manifests();
    let mut child = std::process::Command::new(switchboard_e2e::proxy_bin())
        .args(["--manifests", dir.path().to_str().unwrap()])
        .args([
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
        ])
        .args(["--log-format", "json"])
        // One thread, the current-thread runtime (as on a one-CPU pod).
        .args(["--worker-threads", "1"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        // Piped and never read: the pipe is full after 64 KiB.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn switchboard-proxy");
    let client = http_client();
    let ready = async {
        for _ in 0..200 {
            let ok = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        false
    };
    assert!(ready.await, "the proxy became ready");

    // 20,000 access lines of ~550 bytes (11 MB): past the pipe and the 8 MiB buffer.
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..32 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut ok = 0;
            for i in 0..625 {
                let response = client
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .bearer_auth(GATEWAY_KEY)
                    .json(&serde_json::json!({"model": "echo", "messages": [
                        {"role": "user", "content": format!("line {worker}-{i}")}]}))
                    .send()
                    .await;
                if response.is_ok_and(|r| r.status() == 200) {
                    ok += 1;
                }
            }
            ok
        });
    }
    let within = std::time::Duration::from_secs(120);
    let answered = tokio::time::timeout(within, async {
        let mut answered = 0;
        while let Some(ok) = tasks.join_next().await {
            answered += ok.unwrap_or(0);
        }
        answered
    })
    .await
    .expect("requests do not wait on the log pipe");
    assert_eq!(answered, 20_000, "in {:?}", started.elapsed());

    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the dropped-lines counter is exported");
    assert!(
        dropped > 0.0,
        "lines that did not fit are counted: {dropped}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
