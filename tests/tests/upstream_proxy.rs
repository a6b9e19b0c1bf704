//! Providers reached through an HTTP proxy named by the environment, as in clusters
//! whose egress goes through one: `HTTPS_PROXY` providers through a `CONNECT` tunnel,
//! `HTTP_PROXY` ones by absolute-form requests, the proxy's credentials from its URL,
//! and `NO_PROXY` hosts directly.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::{Proxy, TempDir, consumer, http_client, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request lines, each with its `Proxy-Authorization`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A forward proxy on loopback, doing what squid or tinyproxy do for these two kinds
/// of request: `CONNECT host:port` opens a tunnel; a request in absolute form is
/// forwarded to the host it names. Records each connection's request line and its
/// `Proxy-Authorization`.
struct ForwardProxy {
    port: u16,
    seen: Seen,
}

impl ForwardProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, record.clone()));
            }
        });
        Self { port, seen }
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn forward(mut client: TcpStream, seen: Seen) {
    // The request head: at most 16 KiB, read until its blank line.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if client.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let auth = lines
        .clone()
        .find_map(|l| {
            l.strip_prefix("proxy-authorization: ")
                .or_else(|| l.strip_prefix("Proxy-Authorization: "))
        })
        .map(str::to_string);
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((request_line.clone(), auth));
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "CONNECT" {
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    // Absolute form: `POST http://host:port/path HTTP/1.1`, sent on in origin form.
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    let (Some(authority), Some(path)) = (uri.authority(), uri.path_and_query()) else {
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(authority.as_str()).await else {
        return;
    };
    let rest: Vec<&str> = lines
        .filter(|l| !l.to_ascii_lowercase().starts_with("proxy-authorization:"))
        .collect();
    let forwarded = format!("{method} {path} HTTP/1.1\r\n{}", rest.join("\r\n"));
    if upstream.write_all(forwarded.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// An openai-compatible AIProvider at `endpoint`, and the Secret with its key.
fn provider(name: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIProvider\nmetadata: {{name: {name}}}\nspec:\n  type: openai-compatible\n  endpoint: {endpoint}\n  auth: {{secretRef: {{name: {name}-key, key: key}}}}\n  models: [{{name: fake-model}}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-key}}\nstringData: {{key: sk-provider-key}}\n"
    )
}

async fn chat(proxy: &Proxy, model: &str) -> (u16, Value) {
    let response = http_client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-proxy-test-key")
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn providers_are_reached_through_the_proxy_the_environment_names() {
    let upstream = FakeUpstream::start().await;
    let forward_proxy = ForwardProxy::start().await;
    let port = upstream.addr.port();
    let manifests = TempDir::new("upstream-proxy");
    manifests.write("consumer.yaml", &consumer("app", "sk-proxy-test-key"));
    // Through the proxy: plain HTTP, and HTTPS (a tunnel; the fake speaks no TLS, so
    // the handshake inside it fails, but only after the proxy opened it).
    manifests.write("plain.yaml", &provider("plain", &upstream.endpoint()));
    manifests.write(
        "secure.yaml",
        &provider("secure", &format!("https://127.0.0.1:{port}/v1")),
    );
    // Named in NO_PROXY: directly.
    manifests.write(
        "direct.yaml",
        &provider("direct", &format!("http://localhost:{port}/v1")),
    );
    for name in ["plain", "secure", "direct"] {
        manifests.write(
            &format!("route-{name}.yaml"),
            &route(name, &[name], name, "fake-model"),
        );
    }
    let proxy_url = format!("http://gateway:s3cret@127.0.0.1:{}", forward_proxy.port);
    let proxy = Proxy::start_with_env(
        manifests.path(),
        &[],
        &[
            ("HTTP_PROXY", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "localhost"),
            ("http_proxy", ""),
            ("https_proxy", ""),
            ("no_proxy", ""),
            ("ALL_PROXY", ""),
            ("all_proxy", ""),
        ],
    )
    .await;
    let credentials = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("gateway:s3cret")
    );

    let (status, body) = chat(&proxy, "plain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the fake upstream"
    );
    assert_eq!(
        forward_proxy.seen(),
        [(
            format!("POST http://127.0.0.1:{port}/v1/chat/completions HTTP/1.1"),
            Some(credentials.clone())
        )]
    );
    assert!(
        upstream.headers()[0].get("proxy-authorization").is_none(),
        "the proxy's credentials stop at the proxy"
    );

    let (status, body) = chat(&proxy, "secure").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unreachable", "{body}");
    assert_eq!(
        forward_proxy.seen()[1],
        (
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1"),
            Some(credentials)
        )
    );

    // (Each attempt at the unreachable provider opened a tunnel.)
    let tunnels = forward_proxy.seen().len();
    let (status, body) = chat(&proxy, "direct").await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        forward_proxy.seen().len(),
        tunnels,
        "NO_PROXY hosts are reached directly"
    );
    assert_eq!(upstream.headers().len(), 2);
}
