//! Reloading on file changes: a broken change keeps the serving config and says
//! exactly what is wrong; a valid change takes effect.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::{Proxy, TempDir, chat, consumer, echo_provider, http_client, route};

const KEY: &str = "sk-e2e-reload-key-000001";

/// How long a reload may take to show (the watcher debounces for 200ms).
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

fn manifests() -> TempDir {
    let dir = TempDir::new("reload");
    dir.write("provider.yaml", &echo_provider("echo", "0ms", "0ms"));
    dir.write("route.yaml", &route("chat", &["chat"], "echo", "echo-1"));
    dir.write("consumer.yaml", &consumer("app", KEY));
    dir
}

/// The status of a chat request for `model`, asserting the echo when it is 200.
async fn chat_status(client: &reqwest::Client, proxy: &Proxy, model: &str) -> u16 {
    let response = chat(client, proxy, KEY, model, "still here", false).await;
    let status = response.status().as_u16();
    if status == 200 {
        let body: Value = response.json().await.expect("chat reply is JSON");
        assert_eq!(body["choices"][0]["message"]["content"], "still here");
    }
    status
}

/// Waits until requests for `model` get `status`.
async fn wait_for_status(client: &reqwest::Client, proxy: &Proxy, model: &str, status: u16) {
    let deadline = Instant::now() + RELOAD_WITHIN;
    loop {
        let got = chat_status(client, proxy, model).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "model {model} still answers {got}, not {status}, after {RELOAD_WITHIN:?}; logs:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn broken_reload_keeps_serving_and_valid_reload_applies() {
    let dir = manifests();
    let proxy = Proxy::start(dir.path(), &[]).await;
    let client = http_client();
    assert_eq!(chat_status(&client, &proxy, "chat").await, 200);
    assert_eq!(chat_status(&client, &proxy, "chat-v2").await, 404);

    // A wrongly typed field: refused, with the file, object and field named.
    let since = proxy.log_len();
    let broken = route("chat", &["chat", "chat-v2"], "echo", "echo-1") + "      weight: \"abc\"\n";
    dir.write("route.yaml", &broken);
    let line = proxy
        .wait_for_log_line(
            since,
            &["route.yaml", "AIRoute default/chat"],
            RELOAD_WITHIN,
        )
        .await;
    assert!(line.contains("ERROR"), "not an error: {line}");
    assert!(
        line.contains("spec.backends[0].weight"),
        "field not named: {line}"
    );
    assert!(
        !line.contains("abc"),
        "the offending value is echoed: {line}"
    );
    // The old config still serves; the alias in the broken file does not exist.
    assert_eq!(chat_status(&client, &proxy, "chat").await, 200);
    assert_eq!(chat_status(&client, &proxy, "chat-v2").await, 404);

    // A valid change adding an alias: takes effect.
    let since = proxy.log_len();
    dir.write(
        "route.yaml",
        &route("chat", &["chat", "chat-v2"], "echo", "echo-1"),
    );
    wait_for_status(&client, &proxy, "chat-v2", 200).await;
    assert_eq!(chat_status(&client, &proxy, "chat").await, 200);
    proxy
        .wait_for_log_line(since, &["config reloaded"], RELOAD_WITHIN)
        .await;
}

#[tokio::test]
async fn unknown_field_is_refused_by_name() {
    let dir = manifests();
    let proxy = Proxy::start(dir.path(), &[]).await;
    let client = http_client();
    assert_eq!(chat_status(&client, &proxy, "chat").await, 200);

    // `upstreamname` for `upstreamName`, together with a change that would show if applied.
    let since = proxy.log_len();
    let typo = "apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata:
  name: echo
spec:
  type: echo
  models:
    - name: echo-1
      upstreamname: echo-2
";
    dir.write("provider.yaml", typo);
    dir.write(
        "route.yaml",
        &route("chat", &["chat", "typo-alias"], "echo", "echo-1"),
    );
    let line = proxy
        .wait_for_log_line(
            since,
            &["provider.yaml", "AIProvider default/echo"],
            RELOAD_WITHIN,
        )
        .await;
    assert!(line.contains("ERROR"), "not an error: {line}");
    assert!(
        line.contains("spec.models[0].upstreamname"),
        "field not named: {line}"
    );

    // Nothing from the refused reload applies, not even the valid file next to it.
    assert_eq!(chat_status(&client, &proxy, "chat").await, 200);
    assert_eq!(chat_status(&client, &proxy, "typo-alias").await, 404);

    // Fixing the typo applies both files.
    dir.write("provider.yaml", &echo_provider("echo", "0ms", "0ms"));
    wait_for_status(&client, &proxy, "typo-alias", 200).await;
}
