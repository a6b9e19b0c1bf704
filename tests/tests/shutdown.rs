//! SIGTERM: stop accepting, finish in-flight streams (bounded by --shutdown-timeout),
//! exit 0.

use std::time::{Duration, Instant};

use switchboard_e2e::{
    Proxy, SseReader, StreamSummary, TempDir, chat, consumer, delta_content, echo_provider,
    http_client, read_stream, route,
};

const KEY: &str = "sk-e2e-shutdown-key-0001";

/// A directory with an echo provider that answers after `latency` and streams one
/// word per `chunk_interval`.
fn manifests(latency: &str, chunk_interval: &str) -> TempDir {
    let dir = TempDir::new("shutdown");
    dir.write(
        "provider.yaml",
        &echo_provider("slow", latency, chunk_interval),
    );
    dir.write("route.yaml", &route("slow", &["slow"], "slow", "echo-1"));
    dir.write("consumer.yaml", &consumer("app", KEY));
    dir
}

/// Reads events until the first one with content; returns the summary so far.
async fn first_content(reader: &mut SseReader) -> StreamSummary {
    let mut summary = StreamSummary::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let data = reader
            .next_data()
            .await
            .expect("stream readable")
            .expect("stream ended before its first word");
        let text = delta_content(&data).unwrap_or_default();
        summary.text.push_str(&text);
        summary.events.push(data);
        if !text.is_empty() {
            return summary;
        }
    }
    panic!("no content within 5s: {:?}", summary.events);
}

/// Whether a new TCP connection to `proxy` is refused, polling for up to `within`.
async fn refuses_connections(proxy: &Proxy, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(proxy.addr),
        )
        .await;
        if let Ok(Err(error)) = attempt
            && error.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn sigterm_finishes_in_flight_stream_then_exits_zero() {
    let dir = manifests("0ms", "200ms");
    let mut proxy = Proxy::start(dir.path(), &[]).await;
    let client = http_client();

    // Ten words at 200ms each: about 2.4s of stream.
    let prompt = "one two three four five six seven eight nine ten";
    let response = chat(&client, &proxy, KEY, "slow", prompt, true).await;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let mut summary = first_content(&mut reader).await;

    let signalled = Instant::now();
    proxy.sigterm();

    // New connections are refused while the stream is still going.
    assert!(
        refuses_connections(&proxy, Duration::from_secs(2)).await,
        "new connections were still accepted 2s after SIGTERM; logs:\n{}",
        proxy.logs()
    );

    read_stream(&mut reader, &mut summary).await;
    assert!(
        !summary.broken,
        "stream broke after SIGTERM: {:?}",
        summary.events
    );
    assert_eq!(summary.text, prompt, "events: {:?}", summary.events);
    assert!(
        summary.done,
        "stream did not end with [DONE]: {:?}",
        summary.events
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "the stream ended too early to have been drained: {:?}",
        signalled.elapsed()
    );
    drop(reader);
    drop(client);

    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    let logs = proxy.logs();
    let status =
        status.unwrap_or_else(|| panic!("still running 5s after the stream ended; logs:\n{logs}"));
    assert!(status.success(), "exited with {status}; logs:\n{logs}");
    assert!(logs.contains("shutdown signal received"), "logs:\n{logs}");
}

#[tokio::test]
async fn shutdown_timeout_bounds_a_long_stream() {
    let dir = manifests("0ms", "1s");
    let mut proxy = Proxy::start(dir.path(), &["--shutdown-timeout", "1s"]).await;
    let client = http_client();

    // Ten words at 1s each: about 12s of stream, far past the 1s shutdown timeout.
    let prompt = "one two three four five six seven eight nine ten";
    let response = chat(&client, &proxy, KEY, "slow", prompt, true).await;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let mut summary = first_content(&mut reader).await;

    let signalled = Instant::now();
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    let waited = signalled.elapsed();
    let logs = proxy.logs();
    let status = status.unwrap_or_else(|| panic!("still running 5s after SIGTERM; logs:\n{logs}"));
    assert!(
        status.success(),
        "exited with {status} after {waited:?}; logs:\n{logs}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "exited after {waited:?}, before the 1s shutdown timeout; logs:\n{logs}"
    );
    assert!(logs.contains("shutdown timeout reached"), "logs:\n{logs}");

    // The stream was cut off, not completed.
    tokio::time::timeout(
        Duration::from_secs(5),
        read_stream(&mut reader, &mut summary),
    )
    .await
    .expect("the cut-off stream ends promptly");
    assert!(
        !summary.done,
        "a 12s stream cannot have completed: {:?}",
        summary.events
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_whole_response() {
    let dir = manifests("1500ms", "0ms");
    let mut proxy = Proxy::start(dir.path(), &[]).await;
    let client = http_client();

    // The echo provider takes 1.5s to answer; SIGTERM arrives while it thinks.
    let request = {
        let client = client.clone();
        let url = proxy.url("/v1/chat/completions");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(KEY)
                .json(&switchboard_e2e::chat_body("slow", "worth the wait", false))
                .send()
                .await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
    };
    // Signal once the request is in (the access line is written only at its end).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !request.is_finished(),
        "the request finished before SIGTERM"
    );
    proxy.sigterm();

    let (status, body) = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the in-flight request finishes within 5s")
        .expect("request task")
        .unwrap_or_else(|e| {
            panic!(
                "the in-flight request failed after SIGTERM: {e}; logs:\n{}",
                proxy.logs()
            )
        });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "worth the wait");

    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    let logs = proxy.logs();
    let status =
        status.unwrap_or_else(|| panic!("still running 5s after the request ended; logs:\n{logs}"));
    assert!(status.success(), "exited with {status}; logs:\n{logs}");
}
