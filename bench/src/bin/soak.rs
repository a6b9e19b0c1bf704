//! `bench-soak`: mixed load against a running proxy for a bounded time, sampling the
//! proxy's memory and file descriptors; bench/soak.sh sets up the proxy, the faulty
//! upstreams and the faults around it.
//!
//! Each worker loops: a chat completion, streaming or not, read to the end; every
//! `--disconnect-every`th stream is dropped after its first bytes (a client that goes
//! away). Every outcome is counted. Every `--sample` the proxy's resident memory
//! (VmRSS) and open file descriptors are read from /proc and written as a CSV row.
//!
//! At the end it prints a summary and exits non-zero when a request that could have
//! completed did not, or when memory or file descriptors grew after the warm-up (the
//! mean of the last quarter of samples against the highest sample of the second
//! quarter, with some slack).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;

#[derive(Debug, Parser)]
struct Args {
    /// The proxy's chat completions URL.
    #[arg(long, default_value = "http://127.0.0.1:9100/v1/chat/completions")]
    url: String,
    /// Gateway key.
    #[arg(long, env = "SOAK_KEY")]
    key: String,
    /// The proxy's process id, for /proc.
    #[arg(long)]
    pid: u32,
    /// How long to run.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients (a quarter of them stream).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Every n-th stream is abandoned after its first bytes.
    #[arg(long, default_value_t = 10)]
    disconnect_every: u64,
    /// Pause between a client's requests.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    think: Duration,
    /// How often to sample memory and file descriptors.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Where the samples go (CSV).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Allowed growth of memory after warm-up, in percent.
    #[arg(long, default_value_t = 10)]
    rss_slack_percent: u64,
    /// Allowed growth of file descriptors after warm-up.
    #[arg(long, default_value_t = 16)]
    fd_slack: u64,
}

/// What happened to requests, counted.
#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    streams_ok: AtomicU64,
    /// Streams the upstream broke after their first event: they end with an error
    /// event, as designed (no failover once the client has had bytes).
    streams_cut_upstream: AtomicU64,
    abandoned: AtomicU64,
    failed: AtomicU64,
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn body(stream: bool) -> String {
    format!(
        r#"{{"model":"m","stream":{stream},"max_tokens":64,"messages":[{{"role":"user","content":"a soak request"}}]}}"#
    )
}

/// How one request ended, when it ended well.
enum Ended {
    Ok,
    StreamOk,
    StreamCutUpstream,
    Abandoned,
}

/// Sends one request and reads its answer; `Err` says why it failed.
async fn one_request(
    client: &reqwest::Client,
    args: &Args,
    streaming: bool,
    abandon: bool,
) -> Result<Ended, String> {
    let response = client
        .post(&args.url)
        .bearer_auth(&args.key)
        .header("content-type", "application/json")
        .body(body(streaming))
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if response.status() != 200 {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(format!("status {status}: {text}"));
    }
    if abandon {
        let mut chunks = response.bytes_stream();
        let _ = chunks.next().await;
        return Ok(Ended::Abandoned);
    }
    let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
    let text = || String::from_utf8_lossy(&body).into_owned();
    match streaming {
        false if body.starts_with(b"{") => Ok(Ended::Ok),
        true if body.ends_with(b"data: [DONE]\n\n") => Ok(Ended::StreamOk),
        true if body.windows(7).any(|w| w == b"\"error\"") => Ok(Ended::StreamCutUpstream),
        _ => Err(format!("body: {}", text())),
    }
}

async fn client_loop(
    client: reqwest::Client,
    args: Arc<Args>,
    streaming: bool,
    outcomes: Arc<Outcomes>,
    stop: Arc<AtomicBool>,
    first_failure: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let abandon = streaming && n.is_multiple_of(args.disconnect_every);
        let counter = match one_request(&client, &args, streaming, abandon).await {
            Ok(Ended::Ok) => &outcomes.ok,
            Ok(Ended::StreamOk) => &outcomes.streams_ok,
            Ok(Ended::StreamCutUpstream) => &outcomes.streams_cut_upstream,
            Ok(Ended::Abandoned) => &outcomes.abandoned,
            Err(why) => {
                first_failure.lock().unwrap().get_or_insert(why);
                &outcomes.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(args.think).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let outcomes = Arc::new(Outcomes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let first_failure = Arc::new(std::sync::Mutex::new(None));
    let workers: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(client_loop(
                client.clone(),
                args.clone(),
                i % 4 == 0,
                outcomes.clone(),
                stop.clone(),
                first_failure.clone(),
            ))
        })
        .collect();

    let mut csv = std::fs::File::create(&args.out)?;
    writeln!(csv, "seconds,rss_kib,fds,requests")?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < args.duration {
        tokio::time::sleep(args.sample).await;
        let done = outcomes.ok.load(Ordering::Relaxed)
            + outcomes.streams_ok.load(Ordering::Relaxed)
            + outcomes.streams_cut_upstream.load(Ordering::Relaxed)
            + outcomes.abandoned.load(Ordering::Relaxed)
            + outcomes.failed.load(Ordering::Relaxed);
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: rss_kib(args.pid),
            fds: fds(args.pid),
        };
        writeln!(
            csv,
            "{},{},{},{done}",
            sample.at.as_secs(),
            sample.rss_kib,
            sample.fds
        )?;
        println!(
            "{:>5}s  rss {:>7} KiB  fds {:>4}  requests {done}",
            sample.at.as_secs(),
            sample.rss_kib,
            sample.fds
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(35), worker).await;
    }

    let failed = outcomes.failed.load(Ordering::Relaxed);
    println!(
        "\nrequests: {} ok, {} streams ok, {} streams cut by the upstream (error event), {} streams abandoned by the client, {failed} failed",
        outcomes.ok.load(Ordering::Relaxed),
        outcomes.streams_ok.load(Ordering::Relaxed),
        outcomes.streams_cut_upstream.load(Ordering::Relaxed),
        outcomes.abandoned.load(Ordering::Relaxed),
    );
    if let Some(why) = first_failure.lock().unwrap().as_ref() {
        println!("first failure: {why}");
    }
    let verdict = growth(&samples, &args);
    println!("{verdict}");
    match failed == 0 && !verdict.starts_with("GREW") {
        true => Ok(()),
        false => std::process::exit(1),
    }
}

/// Memory and file descriptors at the end against after warm-up.
fn growth(samples: &[Sample], args: &Args) -> String {
    let quarter = samples.len() / 4;
    if quarter == 0 {
        return "too few samples to judge growth".to_string();
    }
    let warm = &samples[quarter..2 * quarter];
    let last = &samples[samples.len() - quarter..];
    let warm_rss = warm.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let warm_fds = warm.iter().map(|s| s.fds).max().unwrap_or(0);
    let end_rss = last.iter().map(|s| s.rss_kib).sum::<u64>() / last.len() as u64;
    let end_fds = last.iter().map(|s| s.fds).sum::<u64>() / last.len() as u64;
    let rss_ok = end_rss <= warm_rss + warm_rss * args.rss_slack_percent / 100;
    let fds_ok = end_fds <= warm_fds + args.fd_slack;
    format!(
        "{}: memory {warm_rss} KiB after warm-up (highest), {end_rss} KiB at the end (mean); file descriptors {warm_fds} after warm-up, {end_fds} at the end",
        match rss_ok && fds_ok {
            true => "FLAT",
            false => "GREW",
        }
    )
}
