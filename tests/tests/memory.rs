//! Memory under hostile clients, measured on the release proxy process: oversized and
//! stalled bodies, many at once, are refused without memory growing past what the body
//! limit allows, or from one round to the next.

use std::time::Duration;

use bytes::Bytes;
use switchboard_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-memory-test-key-0001";
const MIB: u64 = 1024 * 1024;
const LIMIT: u64 = 4 * MIB;
const CLIENTS: u64 = 16;

/// A chunked upload of `LIMIT + 1 MiB`, refused with 413 once past the limit (or its
/// connection closed while still sending, which is the same refusal seen early).
async fn oversized(client: reqwest::Client, url: String) {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = (LIMIT + MIB) / (64 * 1024);
    let body = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let sent = client
        .post(url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    // 408 when the upload itself outlasts the body read timeout on a busy machine.
    if let Ok(response) = sent {
        assert!(
            matches!(response.status().as_u16(), 413 | 408),
            "{}",
            response.status()
        );
    }
}

/// Declares a body of `LIMIT` bytes, sends 1 MiB of it and stalls: 408 after the body
/// read timeout.
async fn stalled(addr: std::net::SocketAddr) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {LIMIT}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; MIB as usize]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the stalled body is answered")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn oversized_and_stalled_bodies_leave_memory_bounded() {
    let dir = TempDir::new("memory");
    dir.write(
        "gateway.yaml",
        &[
            echo_provider("echo", "0ms", "0ms"),
            route("r", &["echo"], "echo", "echo-1"),
            consumer("app", KEY),
        ]
        .join("---\n"),
    );
    let limit = LIMIT.to_string();
    let proxy = Proxy::start(
        dir.path(),
        &["--max-body-bytes", &limit, "--body-read-timeout", "1s"],
    )
    .await;
    let client = http_client();
    let url = proxy.url("/v1/chat/completions");
    let chat = chat_body("echo", "hello", false).to_string();
    let served = |client: reqwest::Client| {
        let (url, chat) = (url.clone(), chat.clone());
        async move {
            let response = client
                .post(url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(chat)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    for _ in 0..20 {
        served(client.clone()).await;
    }
    let baseline = rss(proxy.pid());

    let mut after = Vec::new();
    for _round in 0..4 {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            clients.spawn(oversized(http_client(), url.clone()));
            clients.spawn(stalled(proxy.addr));
        }
        while let Some(joined) = clients.join_next().await {
            joined.unwrap();
        }
        served(client.clone()).await;
        after.push(rss(proxy.pid()));
    }
    let mib = |bytes: &u64| bytes / MIB;
    let rounds: Vec<u64> = after.iter().map(mib).collect();
    eprintln!(
        "memory: baseline {} MiB, after each round {rounds:?} MiB",
        mib(&baseline)
    );
    // What the limit allows: every client's body held at once, twice over (the
    // collected chunks and their copy into one buffer), plus allocator slack.
    let bound = baseline + 2 * CLIENTS * 2 * LIMIT + 32 * MIB;
    let peak = after.iter().max().copied().unwrap_or_default();
    assert!(
        peak <= bound,
        "memory {} MiB after a round, over the bound of {} MiB (baseline {} MiB)",
        mib(&peak),
        mib(&bound),
        mib(&baseline)
    );
    // How many bodies are alive at once varies from round to round with the machine's
    // load; a leak shows as the last round above everything before it.
    let earlier = after[..3].iter().max().copied().unwrap_or_default();
    assert!(
        after[3] <= earlier + 16 * MIB,
        "memory grew from round to round: {rounds:?} MiB (baseline {} MiB)",
        mib(&baseline)
    );
}
