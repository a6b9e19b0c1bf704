//! The release proxy under a low open-file limit, flooded with connections that send
//! nothing: it must keep answering probes and metrics, refuse what it cannot hold,
//! stay within its memory, and serve again once the flood leaves.

use std::time::{Duration, Instant};

use switchboard_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sk-connections-test-key-0001";
const OPEN_FILES: u64 = 1024;
/// Far more connections than 1,024 descriptors hold.
const FLOOD: usize = 1500;
const MIB: u64 = 1024 * 1024;

/// Sends one HTTP/1.1 request on a new connection; the status line, or an empty string
/// if the connection was closed without an answer.
async fn status_line(addr: std::net::SocketAddr, request: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return String::new();
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
    match read {
        Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: proxy\r\n\r\n")
}

fn chat() -> String {
    let body = chat_body("echo", "hello", false).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_connection_flood_under_a_low_file_limit_leaves_probes_and_metrics_answering() {
    let dir = TempDir::new("connections");
    dir.write(
        "gateway.yaml",
        &[
            echo_provider("echo", "0ms", "0ms"),
            route("r", &["echo"], "echo", "echo-1"),
            consumer("app", KEY),
        ]
        .join("---\n"),
    );
    // Silent connections are held a minute (unless they are spare ones).
    let proxy = Proxy::start_with_open_files(
        dir.path(),
        OPEN_FILES,
        &[
            "--connection-first-byte-timeout",
            "60s",
            "--connection-idle-timeout",
            "60s",
        ],
    )
    .await;
    proxy
        .wait_for_log_line(0, &["both are lowered to fit it"], Duration::from_secs(5))
        .await;
    assert!(status_line(proxy.addr, &chat()).await.contains(" 200 "));
    let baseline = rss(proxy.pid());

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        if let Ok(stream) = TcpStream::connect(proxy.addr).await {
            flood.push(stream);
        }
    }
    // The spare places' silent holders time out (2 s); the served places stay taken.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    for probe in ["/healthz", "/readyz"] {
        let status = status_line(proxy.addr, &get(probe)).await;
        assert!(status.contains(" 200 "), "{probe}: {status:?}");
    }
    assert!(status_line(proxy.addr, &chat()).await.contains(" 503 "));
    let metrics = http_client()
        .get(proxy.metrics_url())
        .send()
        .await
        .expect("the metrics port answers");
    assert_eq!(metrics.status(), 200);
    eprintln!("probes and metrics answered in {:?}", started.elapsed());
    // 384 served and 64 spare places (the open-file limit sets them); the rest refused.
    // The proxy refuses them as it accepts them from the listen queue, which on a busy
    // machine can still be going on: read the count until it is there (or 15 s pass).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = http_client()
            .get(proxy.metrics_url())
            .send()
            .await
            .expect("the metrics port answers")
            .text()
            .await
            .unwrap();
        let refused = text
            .lines()
            .find(|l| {
                l.starts_with("switchboard_client_connections_closed_total{reason=\"refused\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_default();
        if refused >= 900.0 {
            break;
        }
        assert!(Instant::now() < deadline, "refused {refused}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let during = rss(proxy.pid());
    eprintln!(
        "memory: {} MiB before the flood, {} MiB during",
        baseline / MIB,
        during / MIB
    );
    assert!(
        during < baseline + 64 * MIB,
        "memory grew from {} MiB to {} MiB",
        baseline / MIB,
        during / MIB
    );

    drop(flood);
    let served = async {
        loop {
            if status_line(proxy.addr, &chat()).await.contains(" 200 ") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("served again once the flood left");
}
