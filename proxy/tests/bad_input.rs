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
        // Routed on the last `model` and forwarded with both, a provider reading the
        // first would serve a model the consumer may not use.
        ("model given twice", r#"{"model":"forbidden","model":"m","max_tokens":8,"messages":[{"role":"user","content":"x"}]}"#.into()),
        ("a field given twice", r#"{"model":"m","max_tokens":8,"max_tokens":9,"messages":[{"role":"user","content":"x"}]}"#.into()),
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
    let (proxy, upstream, _manifests) = serving_proxy(|_| {}).await;
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

/// A proxy with route `m` on an OpenAI-compatible provider that answers every request,
/// and route `t` on an Anthropic one (the same server), so that `t` is translated.
async fn serving_proxy(
    adjust: impl FnOnce(&mut switchboard_proxy::Settings),
) -> (switchboard_proxy::Proxy, FakeProvider, Manifests) {
    let upstream = FakeProvider::json(
        200,
        r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
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
    let proxy = proxy_with(&manifests, adjust).await;
    (proxy, upstream, manifests)
}

/// The two client APIs: path, auth header, and a valid body for route `m`.
const APIS: [(&str, &str, &str); 2] = [
    (
        "/v1/chat/completions",
        "authorization",
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/messages",
        "x-api-key",
        r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
    ),
];

fn auth_value(header: &str) -> String {
    match header {
        "authorization" => format!("Bearer {KEY}"),
        _ => KEY.to_string(),
    }
}

/// Asserts `text` is an error in the format of the API at `path`; returns its code
/// (OpenAI) or type (Anthropic).
fn assert_api_error(path: &str, text: &str) -> String {
    let error: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    if path == "/v1/messages" {
        assert_eq!(error["type"], "error", "{text}");
        assert!(error["error"]["message"].is_string(), "{text}");
        error["error"]["type"].as_str().unwrap().to_string()
    } else {
        assert!(error["error"]["message"].is_string(), "{text}");
        error["error"]["code"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn bodies_that_are_not_json_by_content_type_get_415_and_json_ones_pass() {
    let (proxy, upstream, _manifests) = serving_proxy(|_| {}).await;
    let client = client();
    let refused = [
        "multipart/form-data; boundary=x",
        "text/plain",
        "text/xml",
        "application/xml",
        "application/octet-stream",
        "application/grpc",
    ];
    let accepted = [
        None,
        Some("application/json"),
        Some("Application/JSON; charset=utf-8"),
        Some("application/vnd.custom+json"),
        // What `curl -d` sends by default.
        Some("application/x-www-form-urlencoded"),
    ];
    for (path, auth, body) in APIS {
        for content_type in refused {
            let response = client
                .post(url(&proxy, path))
                .header(auth, auth_value(auth))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 415, "{path} {content_type}");
            let text = response.text().await.unwrap();
            let code = assert_api_error(path, &text);
            if path != "/v1/messages" {
                assert_eq!(code, "unsupported_media_type");
            }
            assert!(
                text.contains("application/json"),
                "says what to send: {text}"
            );
        }
        for content_type in accepted {
            let mut request = client
                .post(url(&proxy, path))
                .header(auth, auth_value(auth))
                .body(body);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} {content_type:?}");
        }
    }
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        2 * 5,
        "only the accepted requests reached the provider"
    );

    // Unknown fields (docs/proxy.md): forwarded as they came to a provider of the
    // client's own API; refused by name where translation cannot carry them.
    for (path, auth, body) in APIS {
        let body = body.replacen('{', r#"{"x_future_field":{"nested":[1,2]},"#, 1);
        let response = client
            .post(url(&proxy, path))
            .header(auth, auth_value(auth))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        match path {
            "/v1/messages" => {
                assert_eq!(status, 400, "{path}: {text}");
                assert_api_error(path, &text);
                assert!(text.contains("x_future_field"), "{text}");
            }
            _ => assert_eq!(status, 200, "{path}: {text}"),
        }
    }
    let forwarded = upstream.received().last().unwrap().json();
    assert_eq!(forwarded["x_future_field"]["nested"][1], 2);
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_the_proxy_keeps_serving() {
    let (proxy, upstream, _manifests) = serving_proxy(|s| s.max_header_bytes = 16 * 1024).await;
    let client = client();
    for (path, auth, body) in APIS {
        // Over the limit but within hyper's buffer: in the API's format.
        let response = client
            .post(url(&proxy, path))
            .header(auth, auth_value(auth))
            .header("content-type", "application/json")
            .header("x-padding", "a".repeat(20 * 1024))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 431, "{path}");
        let code = assert_api_error(path, &response.text().await.unwrap());
        if path != "/v1/messages" {
            assert_eq!(code, "request_headers_too_large");
        }
        // Many headers adding up past it, too.
        let mut request = client
            .post(url(&proxy, path))
            .header(auth, auth_value(auth))
            .body(body);
        for i in 0..200 {
            request = request.header(format!("x-h-{i}"), "b".repeat(100));
        }
        assert_eq!(request.send().await.unwrap().status(), 431, "{path}");
        // Far past it: hyper refuses before any parsing, with a bare 431.
        let response = client
            .post(url(&proxy, path))
            .header(auth, auth_value(auth))
            .header("x-padding", "a".repeat(200 * 1024))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 431, "{path}");
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let ok = post(&proxy, "/v1/chat/completions", APIS[0].2).await;
    assert_eq!(ok.status(), 200);
}

/// Slow clients: a body that stops arriving gets 408 in its API's format once the body
/// read timeout passes; a head that stops arriving has its connection closed once the
/// header read timeout passes. Neither holds the proxy up.
#[tokio::test]
async fn clients_that_stop_sending_are_timed_out_in_their_apis_format() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (proxy, upstream, _manifests) = serving_proxy(|s| {
        s.body_read_timeout = Duration::from_secs(1);
        s.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    for (path, auth, _) in APIS {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\n{auth}: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":",
            auth_value(auth)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{path}: no answer to a stalled body");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{path}: {took:?}"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let code = assert_api_error(path, body);
        if path != "/v1/messages" {
            assert_eq!(code, "request_timeout");
        }
    }

    // A head that never finishes: the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a stalled head keeps its connection");

    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let ok = post(&proxy, "/v1/chat/completions", APIS[0].2).await;
    assert_eq!(ok.status(), 200);
}
