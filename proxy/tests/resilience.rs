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

/// `world`, and a proxy serving it (keep the manifests alive as long as the proxy).
async fn serve(
    a: &FakeProvider,
    b: Option<&FakeProvider>,
    backends: &str,
    extra: &str,
) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = world(a, b, backends, extra);
    let proxy = support::proxy(&manifests).await;
    (manifests, proxy)
}

const ONLY_A: &str = "    - {provider: a, model: m}\n";

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
    let (_manifests, proxy) = serve(&a, Some(&b), PRIMARY_AND_FALLBACK, "").await;
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
        let (_manifests, proxy) = serve(&a, Some(&b), PRIMARY_AND_FALLBACK, "").await;
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
    let (_manifests, proxy) = serve(
        &a,
        None,
        ONLY_A,
        "  retry: {attempts: 3, backoff: 50ms, maxBackoff: 200ms}\n",
    )
    .await;
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
    let (_manifests, proxy) = serve(&b, None, ONLY_A, "  retry: {attempts: 1}\n").await;
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
    let (_manifests, proxy) = serve(&a, None, ONLY_A, "  retry: {maxBackoff: 2s}\n").await;
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
    let (_manifests, proxy) = serve(&b, None, ONLY_A, "").await;
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
    let (_manifests, proxy) = serve(
        &slow,
        Some(&b),
        PRIMARY_AND_FALLBACK,
        "  timeouts: {request: 300ms}\n",
    )
    .await;
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
    let (_manifests, proxy) = serve(
        &slow,
        None,
        ONLY_A,
        "  timeouts: {request: 10s, total: 400ms}\n",
    )
    .await;
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
    let (_manifests, proxy) = serve(
        &a,
        None,
        ONLY_A,
        "  retry: {attempts: 5, backoff: 1ms, maxBackoff: 1ms, budgetPercent: 10}\n",
    )
    .await;
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

const SAME_TIER: &str = "    - {provider: a, model: m}\n    - {provider: b, model: m}\n";

#[tokio::test]
async fn an_ejected_backend_gets_no_traffic_until_its_probe_then_recovers() {
    // `a` fails its first two requests, then works.
    let a = failing(2, 500).await;
    let b = failing(0, 200).await;
    let (_manifests, proxy) = serve(
        &a,
        Some(&b),
        SAME_TIER,
        "  circuitBreaker: {consecutiveFailures: 2, ejection: 1500ms}\n",
    )
    .await;
    // Every request succeeds (falling back to b) while a collects its two failures.
    while a.hits.load(Ordering::SeqCst) < 2 {
        let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
        assert_eq!(response.status(), 200);
    }
    let ejected_at = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            post(&proxy, "/v1/chat/completions", chat(false))
                .await
                .status(),
            200
        );
    }
    if ejected_at.elapsed() < Duration::from_millis(1400) {
        assert_eq!(a.hits.load(Ordering::SeqCst), 2, "no traffic while ejected");
    }
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(ejected_at.elapsed())).await;
    // Half-open: one probe succeeds and a takes traffic again.
    for _ in 0..20 {
        assert_eq!(
            post(&proxy, "/v1/chat/completions", chat(false))
                .await
                .status(),
            200
        );
    }
    let recovered = a.hits.load(Ordering::SeqCst) - 2;
    assert!(
        recovered >= 3,
        "a served {recovered} of 20 after recovering"
    );
}

#[tokio::test]
async fn when_every_backend_is_ejected_the_one_ejected_longest_ago_is_tried() {
    let a = failing(usize::MAX, 500).await;
    let (_manifests, proxy) = serve(
        &a,
        None,
        ONLY_A,
        "  retry: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1, ejection: 1m}\n",
    )
    .await;
    for _ in 0..3 {
        let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
        assert_eq!(response.status(), 502);
    }
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        3,
        "tried rather than failing outright"
    );
}

#[tokio::test]
async fn least_in_flight_avoids_a_busy_backend() {
    let a = FakeProvider::start(|_| {
        Reply::Delayed(Duration::from_millis(800), Box::new(json(200, OK)))
    })
    .await;
    let b = failing(0, 200).await;
    let manifests = world(&a, Some(&b), SAME_TIER, "  strategy: LeastInFlight\n");
    let proxy = std::sync::Arc::new(support::proxy(&manifests).await);
    let mut requests = Vec::new();
    for _ in 0..24 {
        let proxy = proxy.clone();
        requests.push(tokio::spawn(async move {
            post(&proxy, "/v1/chat/completions", chat(false))
                .await
                .status()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    // Weighted random would send it about 12 (5 or fewer: 0.3% likely); each request
    // there stays in flight 800 ms, so it only wins ties with b.
    let slow = a.hits.load(Ordering::SeqCst);
    assert!(slow <= 5, "the busy backend got {slow} of 24");
}

#[tokio::test]
async fn lowest_latency_and_lowest_cost_prefer_the_better_backend() {
    let slow = FakeProvider::start(|_| {
        Reply::Delayed(Duration::from_millis(150), Box::new(json(200, OK)))
    })
    .await;
    let fast = failing(0, 200).await;
    let (_manifests, proxy) =
        serve(&slow, Some(&fast), SAME_TIER, "  strategy: LowestLatency\n").await;
    for _ in 0..20 {
        assert_eq!(
            post(&proxy, "/v1/chat/completions", chat(false))
                .await
                .status(),
            200
        );
    }
    // Each is measured once (unmeasured backends go first), then the fast one wins.
    assert!(
        slow.hits.load(Ordering::SeqCst) <= 2,
        "slow got {}",
        slow.hits.load(Ordering::SeqCst)
    );

    let dear = failing(0, 200).await;
    let cheap = failing(0, 200).await;
    let manifests = Manifests::new();
    manifests.write("consumer.yaml", &consumer_yaml("app", ""));
    let priced = |name: &str, url: &str, price: f64| {
        provider_yaml(name, "openai-compatible", url, &[], "")
            .replace("  models:\n", &format!("  models:\n    - {{name: m, pricing: {{inputPerMillion: {price}, outputPerMillion: {price}}}}}\n"))
    };
    manifests.write("a.yaml", &priced("a", &dear.url(), 10.0));
    manifests.write("b.yaml", &priced("b", &cheap.url(), 0.5));
    manifests.write(
        "route.yaml",
        &format!("apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {{name: r}}\nspec:\n  models: [m]\n  strategy: LowestCost\n  backends:\n{SAME_TIER}"),
    );
    let proxy = support::proxy(&manifests).await;
    for _ in 0..10 {
        let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
        assert_eq!(header(&response, "x-switchboard-provider"), "default/b");
    }
    assert_eq!(dear.hits.load(Ordering::SeqCst), 0);
}

const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;

fn good_stream() -> Reply {
    Reply::Stream(vec![
        (Duration::ZERO, sse(CHUNK)),
        (Duration::ZERO, sse("[DONE]")),
    ])
}

async fn stream_text(response: reqwest::Response) -> String {
    String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn a_stream_that_stays_silent_or_fails_before_its_first_event_fails_over() {
    let b = FakeProvider::start(|_| good_stream()).await;
    // Silent: headers, then nothing for 5 s.
    let silent =
        FakeProvider::start(|_| Reply::Stream(vec![(Duration::from_secs(5), sse(CHUNK))])).await;
    // Broken: headers, then the stream ends with no event at all.
    let empty = FakeProvider::start(|_| Reply::Stream(Vec::new())).await;
    for a in [&silent, &empty] {
        let (_manifests, proxy) = serve(
            a,
            Some(&b),
            PRIMARY_AND_FALLBACK,
            "  timeouts: {firstToken: 300ms}\n",
        )
        .await;
        let started = Instant::now();
        let response = post(&proxy, "/v1/chat/completions", chat(true)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-switchboard-provider"), "default/b");
        assert_eq!(header(&response, "x-switchboard-attempts"), "2");
        let text = stream_text(response).await;
        assert!(
            text.contains("\"content\":\"hi\"") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_event_ends_with_an_error_and_no_failover() {
    let a = FakeProvider::start(|_| Reply::CutAfter(sse(CHUNK))).await;
    let b = FakeProvider::start(|_| good_stream()).await;
    let (_manifests, proxy) = serve(&a, Some(&b), PRIMARY_AND_FALLBACK, "").await;
    let response = post(&proxy, "/v1/chat/completions", chat(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchboard-provider"), "default/a");
    let text = stream_text(response).await;
    assert!(text.contains("\"content\":\"hi\""), "{text}");
    assert!(text.contains("upstream_stream_error"), "{text}");
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "the client had bytes: no failover"
    );
}

/// `examples/fallback` as shipped, with its two providers pointed at fake servers: the
/// OpenAI one is down (503), so the Anthropic one answers, in OpenAI's format.
#[tokio::test]
async fn the_fallback_example_fails_over_from_openai_to_anthropic() {
    let openai = failing(usize::MAX, 503).await;
    let anthropic_answer = Bytes::from_static(
        br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"from anthropic"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":2}}"#,
    );
    let anthropic_stream: Vec<(Duration, Bytes)> = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/anthropic/stream_text.sse"
    ))
    .unwrap()
    .split_inclusive("\n\n")
    .map(|event| (Duration::ZERO, Bytes::from(event.to_string())))
    .collect();
    let anthropic = FakeProvider::start(move |received| {
        if received.json()["stream"] == true {
            Reply::Stream(anthropic_stream.clone())
        } else {
            Reply::Json(StatusCode::OK, anthropic_answer.clone())
        }
    })
    .await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/fallback/gateway.yaml"
    ))
    .unwrap();
    let pointed = example
        .replace(
            "  type: openai\n",
            &format!("  type: openai\n  endpoint: {}\n", openai.url()),
        )
        .replace(
            "  type: anthropic\n",
            &format!("  type: anthropic\n  endpoint: {}\n", anthropic.url()),
        );
    assert_ne!(pointed, example, "the example names both provider types");
    // The shipped placeholder key is refused; a user puts a real one in its place.
    let app_key = "sk-sb-fallback-test-Qx8vT1mZ0rL3kP9wYb2N";
    let pointed = pointed.replace("sk-switchboard-my-app-key-change-me", app_key);
    let manifests = Manifests::new();
    manifests.write("gateway.yaml", &pointed);
    let proxy = support::proxy(&manifests).await;

    for stream in [false, true] {
        let response = client()
            .post(url(&proxy, "/v1/chat/completions"))
            .bearer_auth(app_key)
            .json(&serde_json::json!({"model": "chat", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-switchboard-provider"),
            "default/anthropic"
        );
        assert_eq!(
            header(&response, "x-switchboard-model"),
            "claude-3-5-haiku-latest"
        );
        assert_eq!(header(&response, "x-switchboard-attempts"), "2");
        let body = response.text().await.unwrap();
        if stream {
            assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        } else {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["choices"][0]["message"]["content"], "from anthropic");
        }
    }
    assert_eq!(openai.hits.load(Ordering::SeqCst), 2);
    let sent = anthropic.last();
    assert_eq!(sent.json()["model"], "claude-3-5-haiku-latest");
    assert_eq!(
        sent.headers["x-api-key"], "sk-ant-REPLACE-WITH-YOUR-ANTHROPIC-KEY",
        "the example's Secret reaches the provider"
    );
}

// === Network faults ===

/// What a raw TCP upstream does with each connection.
#[derive(Clone, Copy)]
enum NetworkFault {
    /// Accepts, then neither reads nor answers, holding the connection open.
    NeverAnswers,
    /// Reads the start of the request, then resets the connection (RST).
    Resets,
}

/// A TCP listener on loopback misbehaving with `fault`; its URL as a provider base URL.
/// The listener lives as long as the test's runtime.
async fn raw_upstream(fault: NetworkFault) -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test makes a handful of attempts.
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            match fault {
                NetworkFault::NeverAnswers => held.push(stream),
                NetworkFault::Resets => {
                    let mut head = [0u8; 64];
                    let _ = stream.read(&mut head).await;
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
            }
        }
    });
    url
}

/// An upstream that accepts and never answers, one that resets the connection, a host
/// name that does not resolve, and a TLS handshake with a server that does not speak
/// TLS: each fails the attempt within the route's timeout, and the request, streaming
/// or not, is answered whole by the next backend. With no other backend, each is a
/// quick 5xx in the client's format.
#[tokio::test]
async fn network_faults_before_an_answer_fall_back_to_the_next_backend() {
    let good = FakeProvider::start(|received| match received.json()["stream"] == true {
        true => good_stream(),
        false => json(200, OK),
    })
    .await;
    let plain_http = FakeProvider::json(200, OK).await;
    let faults = [
        (
            "accepts and never answers",
            raw_upstream(NetworkFault::NeverAnswers).await,
        ),
        (
            "resets the connection",
            raw_upstream(NetworkFault::Resets).await,
        ),
        (
            "does not resolve",
            "http://switchboard-no-such-host.invalid/v1".to_string(),
        ),
        (
            "fails the TLS handshake",
            format!("https://{}/v1", plain_http.addr),
        ),
    ];
    for (what, faulty_url) in faults {
        let manifests = world(
            &good,
            Some(&good),
            PRIMARY_AND_FALLBACK,
            "  timeouts: {request: 500ms}\n",
        );
        manifests.write(
            "a.yaml",
            &provider_yaml("a", "openai-compatible", &faulty_url, &[("m", "m-a")], ""),
        );
        let proxy = support::proxy(&manifests).await;
        for stream in [false, true] {
            let started = Instant::now();
            let response = post(&proxy, "/v1/chat/completions", chat(stream)).await;
            assert_eq!(response.status(), 200, "{what} (stream: {stream})");
            assert_eq!(
                header(&response, "x-switchboard-provider"),
                "default/b",
                "{what}"
            );
            assert_eq!(header(&response, "x-switchboard-attempts"), "2", "{what}");
            let text = stream_text(response).await;
            match stream {
                true => assert!(text.ends_with("data: [DONE]\n\n"), "{what}: {text}"),
                false => assert!(text.contains(r#""content":"ok""#), "{what}: {text}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{what}: {:?}",
                started.elapsed()
            );
        }

        // The faulty backend alone.
        manifests.write(
            "route.yaml",
            &format!(
                "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {{name: r}}\nspec:\n  models: [m]\n  backends:\n{ONLY_A}  timeouts: {{request: 500ms, total: 1s}}\n  retry: {{attempts: 1}}\n"
            ),
        );
        let mut status = 0;
        for _ in 0..50 {
            let started = Instant::now();
            let response = post(&proxy, "/v1/chat/completions", chat(false)).await;
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{what}: {:?}",
                started.elapsed()
            );
            status = response.status().as_u16();
            // Until the reload applies, `b` still answers.
            if status != 200 {
                let code = assert_error_code(response).await;
                assert!(code.starts_with("upstream_"), "{what}: {code}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(matches!(status, 502 | 504), "{what}: {status}");
        proxy.shutdown().await;
    }
    assert_eq!(
        plain_http.hits.load(Ordering::SeqCst),
        0,
        "a TLS handshake never reaches HTTP"
    );
}

/// The OpenAI error code of an error response.
async fn assert_error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
