//! Bounds on what clients hold: a connection that never speaks, one kept open between
//! requests, one that stops reading its response, and more connections or requests
//! than the proxy takes on. Raw sockets on loopback, so that every byte is the test's.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// `upstream` behind model `m`, and the proxy with `adjust`ed settings.
async fn serve(
    upstream: &FakeProvider,
    adjust: impl FnOnce(&mut switchboard_proxy::Settings),
) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests.write("consumer.yaml", &consumer_yaml("app", ""));
    manifests.write(
        "a.yaml",
        &provider_yaml(
            "a",
            "openai-compatible",
            &upstream.url(),
            &[("m", "m-a")],
            "",
        ),
    );
    manifests.write("route.yaml", &route_yaml("r", &["m"], "a", "m", ""));
    let proxy = proxy_with(&manifests, adjust).await;
    (manifests, proxy)
}

async fn answering() -> FakeProvider {
    FakeProvider::start(|_| Reply::Json(StatusCode::OK, Bytes::from_static(OK.as_bytes()))).await
}

/// Reads until the proxy closes the connection (end of file or reset); how long that
/// took. Fails if it stays open for `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end)
        .await
        .unwrap_or_else(|_| panic!("the connection is still open after {within:?}"));
    started.elapsed()
}

/// An HTTP/1.1 request with a body, by hand.
fn http1(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `request` on a new connection and reads the response head and whatever body
/// arrives until the connection closes or goes quiet for 2 s.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"\r\n\r\n") || answer.ends_with(b"}") || answer.ends_with(b"\n") {
            // A whole small answer: enough for these tests.
            if String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

async fn closed(proxy: &switchboard_proxy::Proxy, reason: &str) -> f64 {
    metric_or_zero(
        &scrape(proxy).await,
        "switchboard_client_connections_closed_total",
        &[("reason", reason)],
    )
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_at_the_first_byte_timeout() {
    let upstream = answering().await;
    let (_manifests, proxy) = serve(&upstream, |s| {
        s.connection_first_byte_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(closed(&proxy, "first_byte_timeout").await, 1.0);

    // A connection that speaks in time is served.
    let answer = exchange(proxy.addr, &http1("GET", "/healthz", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_idle_timeout_http1_and_http2() {
    let upstream = answering().await;
    let idle = Duration::from_millis(600);
    let (_manifests, proxy) = serve(&upstream, |s| s.connection_idle_timeout = idle).await;

    // HTTP/1.1 keep-alive: one request, then quiet.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    kept.write_all(http1("POST", "/v1/chat/completions", &chat("m", false)).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let took = closed_within(&mut kept, Duration::from_secs(5)).await;
    assert!(took >= idle / 2, "closed after {took:?}");

    // HTTP/2 (prior knowledge): the preface and an empty SETTINGS frame, then quiet.
    // The proxy answers with its settings and, once idle, goes away.
    let mut h2 = TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    closed_within(&mut h2, Duration::from_secs(5)).await;

    // Half a preface: never a connection hyper can serve; closed all the same.
    let mut half = TcpStream::connect(proxy.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_within(&mut half, Duration::from_secs(5)).await;

    assert!(closed(&proxy, "idle_timeout").await >= 3.0);
    let response = post(&proxy, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn past_max_connections_probes_are_answered_and_requests_refused() {
    let upstream = answering().await;
    let (_manifests, proxy) = serve(&upstream, |s| s.max_connections = 2).await;
    // Two connections hold both places (they stay open: the first-byte timeout is 10 s).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Spare connections answer probes...
    for probe in ["/healthz", "/readyz"] {
        let answer = exchange(proxy.addr, &http1("GET", probe, "")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{probe}: {answer}");
        assert!(answer.contains("connection: close"), "{probe}: {answer}");
    }
    // ...and tell everyone else to come back, in the client's format.
    let answer = exchange(
        proxy.addr,
        &http1("POST", "/v1/chat/completions", &chat("m", false)),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("gateway_overloaded"), "{answer}");
    assert!(answer.contains("limit of connections"), "{answer}");
    let answer = exchange(
        proxy.addr,
        &http1(
            "POST",
            "/v1/messages",
            r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""type":"error""#), "{answer}");
    assert_eq!(upstream.received().len(), 0, "nothing reached the provider");

    // With every spare place taken too, a new connection is closed at once.
    for _ in 0..64 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    let took = closed_within(&mut refused, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(closed(&proxy, "refused").await >= 1.0);
    let scrape = scrape(&proxy).await;
    assert_eq!(metric(&scrape, "switchboard_client_connections", &[]), 66.0);

    // Once the holders leave, the proxy serves again.
    drop(held);
    let served = async {
        loop {
            let answer = exchange(
                proxy.addr,
                &http1("POST", "/v1/chat/completions", &chat("m", false)),
            )
            .await;
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("served once the connections closed");
}

#[tokio::test]
async fn past_max_requests_in_flight_requests_get_503_with_retry_after() {
    let slow = FakeProvider::start(|_| {
        Reply::Delayed(
            Duration::from_millis(1500),
            Box::new(Reply::Json(
                StatusCode::OK,
                Bytes::from_static(OK.as_bytes()),
            )),
        )
    })
    .await;
    let (_manifests, proxy) = serve(&slow, |s| s.max_requests_in_flight = 2).await;
    let mut busy = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let url = url(&proxy, "/v1/chat/completions");
        busy.spawn(async move {
            client()
                .post(url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(chat("m", false))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let both_upstream = async {
        while slow.received().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), both_upstream)
        .await
        .expect("both requests reach the provider");

    let response = post(&proxy, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let message = assert_error(response, 503, "gateway_overloaded").await;
    assert!(message.contains("requests in flight"), "{message}");
    let response = post(
        &proxy,
        "/v1/messages",
        r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    // Probes are answered whatever the load.
    let health = client().get(url(&proxy, "/readyz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    while let Some(status) = busy.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        slow.received().len(),
        2,
        "the refused ones never went upstream"
    );
    let scrape = scrape(&proxy).await;
    assert_eq!(
        metric(
            &scrape,
            "switchboard_requests_total",
            &[("error_type", "gateway_overloaded")]
        ),
        2.0
    );
    let response = post(&proxy, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_at_the_idle_timeout() {
    // An endless stream of 32 KiB events, as fast as the proxy takes them.
    let event = sse(&format!("\"{}\"", "x".repeat(32 * 1024)));
    let flood = FakeProvider::start(move |_| {
        Reply::Stream(std::iter::repeat_n((Duration::ZERO, event.clone()), 100_000).collect())
    })
    .await;
    let idle = Duration::from_millis(500);
    let (_manifests, proxy) = serve(&flood, |s| s.connection_idle_timeout = idle).await;
    let mut reader = TcpStream::connect(proxy.addr).await.unwrap();
    reader
        .write_all(http1("POST", "/v1/chat/completions", &chat("m", true)).as_bytes())
        .await
        .unwrap();
    // Read the head, then nothing: the proxy's writes back up.
    let mut buf = vec![0u8; 1024];
    let n = reader.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let dropped = async {
        loop {
            if closed(&proxy, "client_stalled").await >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the stalled client is dropped");
    // The request ended (as the client's leaving) and nothing is held for it.
    let ended = async {
        loop {
            let scrape = scrape(&proxy).await;
            if metric_or_zero(&scrape, "switchboard_requests_in_flight", &[]) == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("the request ends");
}
