//! Every error a client can meet: OpenAI's error JSON, the right status, a request id,
//! and the proxy still serving afterwards.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::*;
use switchboard_proxy::Proxy;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;

/// A gateway whose route `m` goes to `upstream_url`; `extra_route` adds route spec lines.
async fn gateway_to(upstream_url: &str, extra_route: &str) -> (Manifests, Proxy) {
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml("up", "openai-compatible", upstream_url, &[("m", "m")], ""),
        )
        .write(
            "route.yaml",
            &route_yaml("r", &["m"], "up", "m", extra_route),
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy_with(&manifests, |s| s.max_body_bytes = 4096).await;
    (manifests, proxy)
}

/// After an error the proxy must go on serving: a good request still works.
async fn still_serves(proxy: &Proxy) {
    let models = client()
        .get(url(proxy, "/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK);
}

#[tokio::test]
async fn authentication_errors() {
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let chat = url(&proxy, "/v1/chat/completions");

    let missing = client().post(&chat).body(CHAT).send().await.unwrap();
    assert_error(missing, 401, "missing_api_key").await;
    let wrong = client()
        .post(&chat)
        .bearer_auth("sk-not-a-real-key-at-all")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    let message = assert_error(wrong, 401, "invalid_api_key").await;
    assert!(
        !message.contains("sk-not-a-real-key"),
        "the key is not echoed"
    );
    let basic = client()
        .post(&chat)
        .header("authorization", "Basic Zm9vOmJhcg==")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_error(basic, 401, "missing_api_key").await;

    // x-api-key works as well as a bearer token.
    let ok = client()
        .post(&chat)
        .header("x-api-key", KEY)
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the authenticated request went upstream"
    );
    still_serves(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_errors() {
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "model_not_found",
            "gpt-9",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role""#,
            400,
            "invalid_request",
            "not a valid JSON",
        ),
        ("/v1/chat/completions", "", 400, "invalid_request", "empty"),
        (
            "/v1/chat/completions",
            "[1,2]",
            400,
            "invalid_request",
            "JSON object",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            "invalid_request",
            "'model'",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":5,"messages":[]}"#,
            400,
            "invalid_request",
            "'model' must be",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m"}"#,
            400,
            "invalid_request",
            "'messages'",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            400,
            "invalid_request",
            "at least one",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","messages":"hi"}"#,
            400,
            "invalid_request",
            "array",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
            400,
            "invalid_request",
            "'stream'",
        ),
        (
            "/v1/embeddings",
            r#"{"model":"m"}"#,
            400,
            "invalid_request",
            "'input'",
        ),
    ];
    for (path, body, status, code, needle) in cases {
        let response = post(&proxy, path, *body).await;
        let message = assert_error(response, *status, code).await;
        assert!(
            message.contains(needle),
            "{body}: message {message:?} should mention {needle:?}"
        );
    }
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "bad requests never reach the provider"
    );
    still_serves(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_with_or_without_content_length() {
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(10_000)
    );

    let declared = post(&proxy, "/v1/chat/completions", big.clone()).await;
    assert_error(declared, 413, "request_too_large").await;

    // Chunked: no Content-Length, so the limit must hold while reading.
    let pieces: Vec<Result<Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let chunked = client()
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_error(chunked, 413, "request_too_large").await;
    still_serves(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let response = client()
        .get(url(&proxy, "/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "unknown_url").await;
    let response = client()
        .get(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_provider_is_502() {
    // Bind and drop: nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_m, proxy) = gateway_to(&format!("http://{closed}/v1"), "").await;
    let response = post(&proxy, "/v1/chat/completions", CHAT).await;
    assert_error(response, 502, "upstream_unreachable").await;
    still_serves(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn provider_server_error_is_502_with_the_provider_message() {
    let upstream = FakeProvider::json(
        500,
        r#"{"error":{"message":"internal details","type":"server_error"}}"#,
    )
    .await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let response = post(&proxy, "/v1/chat/completions", CHAT).await;
    let message = assert_error(response, 502, "upstream_error").await;
    assert!(message.contains("500"));
    assert!(
        message.contains("internal details"),
        "the provider's message helps the caller: {message}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_provider_is_504_after_the_route_timeout() {
    let upstream = FakeProvider::start(|_| {
        Reply::Delayed(
            Duration::from_secs(3),
            Box::new(Reply::Json(StatusCode::OK, Bytes::from_static(b"{}"))),
        )
    })
    .await;
    let (_m, proxy) = gateway_to(&upstream.url(), "  timeouts: {request: 200ms}\n").await;
    let started = std::time::Instant::now();
    let response = post(&proxy, "/v1/chat/completions", CHAT).await;
    assert_error(response, 504, "upstream_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout cut the wait short"
    );

    let stream = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_error(stream, 504, "upstream_timeout").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn provider_client_errors_pass_through_and_auth_errors_do_not() {
    let refusal = r#"{"error":{"message":"max_tokens is too large","type":"invalid_request_error","param":"max_tokens","code":null}}"#;
    let upstream = FakeProvider::json(400, refusal).await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let response = post(&proxy, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), refusal);
    proxy.shutdown().await;

    let upstream = FakeProvider::json(401, r#"{"error":{"message":"Incorrect API key provided: sk-prov***","type":"invalid_request_error"}}"#).await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let response = post(&proxy, "/v1/chat/completions", CHAT).await;
    let message = assert_error(response, 502, "upstream_auth_failed").await;
    assert!(!message.contains("sk-prov"));

    let rate_limited = FakeProvider::start(|_| {
        Reply::Json(
            StatusCode::TOO_MANY_REQUESTS,
            Bytes::from_static(br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#),
        )
    })
    .await;
    let (_m2, proxy2) = gateway_to(&rate_limited.url(), "").await;
    let response = post(&proxy2, "/v1/chat/completions", CHAT).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    proxy.shutdown().await;
    proxy2.shutdown().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let health = client().get(url(&proxy, "/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = client().get(url(&proxy, "/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(ready.text().await.unwrap().contains("sha256:"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_request_head_is_refused_and_the_proxy_keeps_serving() {
    let upstream = FakeProvider::json(200, "{}").await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let response = client()
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-padding", "p".repeat(100 * 1024))
        .body(CHAT)
        .send()
        .await;
    match response {
        // hyper answers 431 to a head over the limit, or closes the connection.
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(error) => assert!(error.is_request() || error.is_connect(), "{error}"),
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    still_serves(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn serves_http2_cleartext_clients() {
    let upstream = FakeProvider::json(200, r#"{"ok":true}"#).await;
    let (_m, proxy) = gateway_to(&upstream.url(), "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    proxy.shutdown().await;
}
