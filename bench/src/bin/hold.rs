//! `bench-hold`: opens many connections to a proxy and keeps them open, so the
//! benchmark can read the proxy's memory with that many clients attached. It is not a
//! load generator (oha is): it sends one request per connection, then holds.
//!
//! - `idle`: each connection completes one request and stays open, idle (keep-alive).
//! - `streams`: each connection starts a streaming request and keeps reading it.
//!
//! Prints `ready <held> <failed>` once every connection is in place, holds for
//! `--hold`, prints `done <bytes read while holding> <connections closed by the
//! server while held>` and exits, closing them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(Debug, Parser)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    /// host:port of the proxy.
    #[arg(long)]
    target: String,
    /// Connections to hold.
    #[arg(long)]
    connections: usize,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// File holding the JSON request body.
    #[arg(long)]
    body_file: std::path::PathBuf,
    /// How long to hold the connections once all are in place.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    setup_concurrency: usize,
    /// Give up on setting up connections after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    setup_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Idle,
    Streams,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = std::fs::read(&args.body_file)
        .with_context(|| format!("reading {}", args.body_file.display()))?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        args.path,
        args.target,
        body.len()
    );
    for header in &args.headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(&body);
    let request: Arc<[u8]> = request.into();

    let setup = Arc::new(Semaphore::new(args.setup_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let held_stats = Arc::new(HoldStats::default());
    for _ in 0..args.connections {
        let (setup, request, ready, stop, stats) = (
            setup.clone(),
            request.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            held_stats.clone(),
        );
        let (target, mode) = (args.target.clone(), args.mode);
        tokio::spawn(async move {
            let Ok(permit) = setup.acquire_owned().await else {
                return;
            };
            let mut stream = match open(&target, &request, mode).await {
                Ok(stream) => stream,
                Err(error) => {
                    let _ = ready.send(Err(error)).await;
                    return;
                }
            };
            drop(permit);
            let _ = ready.send(Ok(())).await;
            hold(&mut stream, stop, &stats).await;
        });
    }
    drop(ready_tx);

    let (mut held, mut failed, mut first_error) = (0usize, 0usize, None);
    let deadline = tokio::time::sleep(args.setup_timeout);
    tokio::pin!(deadline);
    while held + failed < args.connections {
        tokio::select! {
            outcome = ready_rx.recv() => match outcome {
                Some(Ok(())) => held += 1,
                Some(Err(error)) => {
                    failed += 1;
                    first_error.get_or_insert(error);
                }
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    if let Some(error) = first_error {
        eprintln!("first failure: {error:#}");
    }
    println!("ready {held} {failed}");
    tokio::time::sleep(args.hold).await;
    let _ = stop_tx.send(true);
    println!(
        "done {} {}",
        held_stats.bytes.load(Ordering::Relaxed),
        held_stats.closed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Connects and sends the request; returns once the response is complete (idle) or
/// its first body bytes have arrived (streams).
async fn open(target: &str, request: &[u8], mode: Mode) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(target).await.context("connect")?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await.context("send request")?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        read_some(&mut stream, &mut buf).await?;
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too large");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!(
            "unexpected response: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    match mode {
        Mode::Streams => {
            while buf.len() == head_end {
                read_some(&mut stream, &mut buf).await?;
            }
        }
        Mode::Idle => {
            let length = head.lines().find_map(|line| {
                line.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            match length {
                Some(length) => {
                    while buf.len() < head_end + length {
                        read_some(&mut stream, &mut buf).await?;
                    }
                }
                None => {
                    while !buf.ends_with(b"0\r\n\r\n") {
                        read_some(&mut stream, &mut buf).await?;
                    }
                }
            }
        }
    }
    Ok(stream)
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.context("read response")?;
    if n == 0 {
        bail!("connection closed early");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// What happened to held connections.
#[derive(Debug, Default)]
struct HoldStats {
    /// Bytes read while holding (stream events).
    bytes: AtomicU64,
    /// Connections the other side closed while they were held.
    closed: AtomicU64,
}

/// Keeps the connection open until told to stop, reading (and counting) whatever
/// arrives, as a streaming client would.
async fn hold(stream: &mut TcpStream, mut stop: watch::Receiver<bool>, stats: &HoldStats) {
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            n = stream.read(&mut chunk) => match n {
                Ok(0) | Err(_) => {
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(n) => {
                    stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            _ = stop.changed() => return,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
