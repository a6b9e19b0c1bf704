//! `bench-upstream`: a fake OpenAI-compatible provider that answers at almost no cost,
//! so the benchmark measures the proxy in front of it, not the upstream.
//!
//! Every POST is a chat completion. The body decides the answer:
//! - `"stream": true` and the model `bench-slow`: one event every `--slow-interval`,
//!   `--slow-events` times (for the memory-under-slow-streams scenario);
//! - `"stream": true`: a whole stream of chunks at once, usage chunk included;
//! - anything else: a fixed JSON completion with usage.
//!
//! Responses are static bytes; the only per-request work is reading the body.
//!
//! With `--fault-percent P` (for the soak, bench/soak.sh), P in every 100 requests
//! misbehave instead, in turn: a 500, a connection that never answers, and a body that
//! breaks off (a JSON answer cut short, or a stream cut after its first event).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Pause between events of a slow stream.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    slow_interval: Duration,
    /// Events in a slow stream.
    #[arg(long, default_value_t = 600)]
    slow_events: u32,
    /// Requests in every 100 that get a fault (0 to 100).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    fault_percent: u64,
}

/// What a faulty request gets; they take turns.
#[derive(Debug, Clone, Copy)]
enum Fault {
    ServerError,
    NeverAnswers,
    BreaksOff,
}

type Body = BoxBody<Bytes, BrokenOff>;

/// The error a body that breaks off ends with.
#[derive(Debug)]
struct BrokenOff;

impl std::fmt::Display for BrokenOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: the body breaks off")
    }
}

impl std::error::Error for BrokenOff {}

const FAULT_ERROR: &str =
    r#"{"error":{"message":"injected fault","type":"server_error","code":null}}"#;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A benchmark reply of about forty tokens: roughly the size of a classification, an extraction or a one-sentence answer, which is what most gateway traffic carries.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":52,"completion_tokens":38,"total_tokens":90,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}"#;

const STREAM_WORDS: [&str; 8] = [
    "A",
    " benchmark",
    " reply",
    " streamed",
    " in",
    " eight",
    " small",
    " chunks.",
];

fn chunk(delta: &str, finish: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\"model\":\"bench\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
    ))
}

const USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\"model\":\"bench\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":52,\"completion_tokens\":8,\"total_tokens\":60}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// The answers, built once.
struct Answers {
    completion: Bytes,
    /// A fast stream: every event, in order, sent without pause.
    stream: Vec<Bytes>,
    /// One content event, repeated by slow streams.
    slow_event: Bytes,
    slow_interval: Duration,
    slow_events: u32,
    fault_percent: u64,
    requests: AtomicU64,
}

impl Answers {
    fn new(args: &Args) -> Self {
        let mut stream = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
        for word in STREAM_WORDS {
            stream.push(chunk(&format!("{{\"content\":\"{word}\"}}"), "null"));
        }
        stream.push(chunk("{}", "\"stop\""));
        stream.push(Bytes::from_static(USAGE_CHUNK.as_bytes()));
        stream.push(Bytes::from_static(DONE.as_bytes()));
        Self {
            completion: Bytes::from_static(COMPLETION.as_bytes()),
            stream,
            slow_event: chunk(r#"{"content":" slow"}"#, "null"),
            slow_interval: args.slow_interval,
            slow_events: args.slow_events,
            fault_percent: args.fault_percent,
            requests: AtomicU64::new(0),
        }
    }

    /// Whether request number `n` gets a fault, and which: spread evenly, `P` in 100.
    fn fault(&self, n: u64) -> Option<Fault> {
        let p = self.fault_percent;
        // Request n is faulty when floor(n*p/100) steps up at it.
        let faulty = p > 0 && (n * p) / 100 != ((n + 1) * p) / 100;
        let turn = (n * p) / 100;
        faulty.then_some(match turn % 3 {
            0 => Fault::ServerError,
            1 => Fault::NeverAnswers,
            _ => Fault::BreaksOff,
        })
    }

    async fn answer(&'static self, request: Request<Incoming>) -> Response<Body> {
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let stream = contains(&body, br#""stream":true"#) || contains(&body, br#""stream": true"#);
        match self.fault(self.requests.fetch_add(1, Ordering::Relaxed)) {
            None => {}
            Some(Fault::ServerError) => {
                let mut response = respond(
                    "application/json",
                    full(Bytes::from_static(FAULT_ERROR.as_bytes())),
                );
                *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                return response;
            }
            // Held until the proxy gives up on it and closes the connection.
            Some(Fault::NeverAnswers) => std::future::pending().await,
            Some(Fault::BreaksOff) => {
                let first = match stream {
                    true => self.stream[0].clone(),
                    false => self.completion.slice(..self.completion.len() / 2),
                };
                let content_type = match stream {
                    true => "text/event-stream",
                    false => "application/json",
                };
                // An error from the body makes hyper abort the connection mid-body; the
                // pause lets the head and first bytes go out before it does.
                let broken = futures_util::stream::iter([Ok(Frame::data(first))]).chain(
                    futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Err(BrokenOff)
                    }),
                );
                return respond(content_type, BodyExt::boxed(StreamBody::new(broken)));
            }
        }
        if !stream {
            return respond("application/json", full(self.completion.clone()));
        }
        if contains(&body, b"bench-slow") {
            let interval = self.slow_interval;
            let events =
                futures_util::stream::iter(0..self.slow_events).then(move |_| async move {
                    tokio::time::sleep(interval).await;
                    Ok(Frame::data(self.slow_event.clone()))
                });
            return respond("text/event-stream", BodyExt::boxed(StreamBody::new(events)));
        }
        let events =
            futures_util::stream::iter(self.stream.iter().cloned().map(Frame::data).map(Ok));
        respond("text/event-stream", BodyExt::boxed(StreamBody::new(events)))
    }
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn respond(content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// One thread: the upstream shares its core with the load generator.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let answers: &'static Answers = Box::leak(Box::new(Answers::new(&args)));
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service =
            service_fn(
                move |request| async move { Ok::<_, Infallible>(answers.answer(request).await) },
            );
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
