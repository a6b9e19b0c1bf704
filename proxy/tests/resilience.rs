//! Retries, fallback and timeouts against fault-injecting fake providers on loopback.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use support::*;

const OK: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;

fn chat(stream: bool) -> String {
    format!(r#"{{"model":"m","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

fn json(status: u16, body: &'static str) -> Reply {
    Reply::Json(
        StatusCode::from_u16(status).unwrap(),
        Bytes::from_static(body.as_bytes()),
    )
}

const FAILED: &str = r#"{"error":{"message":"boom","type":"server_error"}}"#;

/// A provider that fails `failures` times with `status`, then answers OK.
async fn failing(failures: usize, status: u16) -> FakeProvider {
    let count = AtomicUsize::new(0);
    FakeProvider::start(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) < failures {
            json(status, FAILED)
        } else {
            json(200, OK)
        }
    })
    .await
}

/// Providers `a` (and `b` when given) and route `r` for model `m` with `backends` and
/// `extra` spec lines.
fn world(a: &FakeProvider, b: Option<&FakeProvider>, backends: &str, extra: &str) -> Manifests {
    let manifests = Manifests::new();
    manifests.write("consumer.yaml", &consumer_yaml("app", ""));
    manifests.write(
        "a.yaml",
        &provider_yaml("a", "openai-compatible", &a.url(), &[("m", "m-a")], ""),
    );
    if let Some(b) = b {
        manifests.write(
            "b.yaml",
            &provider_yaml("b", "openai-compatible", &b.url(), &[("m", "m-b")], ""),
        );
    }
    manifests.write(
        "route.yaml",
        &format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {{name: r}}\nspec:\n  models: [m]\n  backends:\n{backends}{extra}"
        ),
    );
    manifests
}

const PRIMARY_AND_FALLBACK: &str =
    "    - {provider: a, model: m}\n    - {provider: b, model: m, priority: 1}\n";

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failing_backend_falls_back_to_the_next_tier_and_says_so() {
    let a = failing(usize::MAX, 500).await;
    let b = failing(0, 200).await;
    let manifests = world(&a, Some(&b), PRIMARY_AND_FALLBACK, "");
    let proxy = support::proxy(&manifests).await;
    for stream in [false, true] {
        let response = post(&proxy, "/v1/chat/completions", chat(stream)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-switchboard-provider"), "default/b");
        assert_eq!(header(&response, "x-switchboard-model"), "m-b");
        assert_eq!(header(&response, "x-switchboard-attempts"), "2");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);
    assert_eq!(b.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_backend_falls_back() {
    // A port nothing listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let b = failing(0, 200).await;
    let manifests = world(&b, None, "", "");
    manifests.write(
        "a.yaml",
        &provider_yaml("a", "openai-compatible", &dead, &[("m", "m-a")], ""),
    );
    manifests.write(
        "b.yaml",
        &provider_yaml("b", "openai-compatible", &b.url(), &[("m", "m-b")], ""),
    );
    manifests.write(
        "route.yaml",
        &format!("apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {{name: r}}\nspec:\n  models: [m]\n  backends:\n{PRIMARY_AND_FALLBACK}"),
    );
    let proxy = support::proxy(&manifests).await;
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchboard-provider"), "default/b");
}

#[tokio::test]
async fn client_errors_from_the_provider_are_returned_at_once() {
    for status in [400, 401, 404] {
        let a = failing(usize::MAX, status).await;
        let b = failing(0, 200).await;
        let manifests = world(&a, Some(&b), PRIMARY_AND_FALLBACK, "");
        let proxy = support::proxy(&manifests).await;
        let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
        assert_ne!(response.status(), 200, "{status}");
        assert_eq!(header(&response, "x-switchboard-attempts"), "1");
        assert_eq!(a.hits.load(Ordering::SeqCst), 1, "{status}");
        assert_eq!(b.hits.load(Ordering::SeqCst), 0, "{status}: no fallback");
    }
}

#[tokio::test]
async fn attempts_are_bounded_and_backed_off_on_a_single_backend() {
    let a = failing(usize::MAX, 503).await;
    let manifests = world(
        &a,
        None,
        "    - {provider: a, model: m}\n",
        "  retry: {attempts: 3, backoff: 50ms, maxBackoff: 200ms}\n",
    );
    let proxy = support::proxy(&manifests).await;
    let started = Instant::now();
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "x-switchboard-attempts"), "3");
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        3,
        "never more than the policy allows"
    );
    // Two backoffs: 25-50 ms, then 50-100 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(75),
        "{:?}",
        started.elapsed()
    );

    // A route with attempts: 1 never retries.
    let b = failing(usize::MAX, 503).await;
    let manifests = world(
        &b,
        None,
        "    - {provider: a, model: m}\n",
        "  retry: {attempts: 1}\n",
    );
    let proxy = support::proxy(&manifests).await;
    let _ = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_max_backoff() {
    let count = AtomicUsize::new(0);
    let a = FakeProvider::start(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::RetryAfter(1, Box::new(json(429, FAILED)))
        } else {
            json(200, OK)
        }
    })
    .await;
    let manifests = world(
        &a,
        None,
        "    - {provider: a, model: m}\n",
        "  retry: {maxBackoff: 2s}\n",
    );
    let proxy = support::proxy(&manifests).await;
    let started = Instant::now();
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchboard-attempts"), "2");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );

    // Asking for longer than maxBackoff: not tried again; the 429 and its Retry-After
    // reach the client.
    let b = FakeProvider::start(|_| Reply::RetryAfter(30, Box::new(json(429, FAILED)))).await;
    let manifests = world(&b, None, "    - {provider: a, model: m}\n", "");
    let proxy = support::proxy(&manifests).await;
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "30");
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_slow_backend_times_out_per_attempt_and_the_total_bounds_the_request() {
    let slow =
        FakeProvider::start(|_| Reply::Delayed(Duration::from_secs(5), Box::new(json(200, OK))))
            .await;
    let b = failing(0, 200).await;
    let manifests = world(
        &slow,
        Some(&b),
        PRIMARY_AND_FALLBACK,
        "  timeouts: {request: 300ms}\n",
    );
    let proxy = support::proxy(&manifests).await;
    let started = Instant::now();
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchboard-provider"), "default/b");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let slow =
        FakeProvider::start(|_| Reply::Delayed(Duration::from_secs(5), Box::new(json(200, OK))))
            .await;
    let manifests = world(
        &slow,
        None,
        "    - {provider: a, model: m}\n",
        "  timeouts: {request: 10s, total: 400ms}\n",
    );
    let proxy = support::proxy(&manifests).await;
    let started = Instant::now();
    let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(slow.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_retry_budget_keeps_an_outage_from_multiplying_load() {
    let a = failing(usize::MAX, 500).await;
    let manifests = world(
        &a,
        None,
        "    - {provider: a, model: m}\n",
        "  retry: {attempts: 5, backoff: 1ms, maxBackoff: 1ms, budgetPercent: 10}\n",
    );
    let proxy = support::proxy(&manifests).await;
    let started = Instant::now();
    let requests = 60;
    for _ in 0..requests {
        let _ = post(&proxy, "/v1/chat/completions", chat(false)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let hits = a.hits.load(Ordering::SeqCst) as f64;
    // Without a budget: 300 upstream calls. With it: the requests, 10% of them, and the
    // small allowance (3 at the start, 3 per second).
    let bound = f64::from(requests) * 1.1 + 3.0 + 3.0 * seconds + 1.0;
    assert!(
        hits <= bound,
        "{hits} upstream calls for {requests} requests (bound {bound:.0})"
    );
    assert!(hits > f64::from(requests), "some retries still happen");
}
