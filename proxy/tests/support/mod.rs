//! Test support: fake providers as real HTTP servers on loopback, manifest directories,
//! and an in-process proxy bound to 127.0.0.1:0.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use switchboard_proxy::{Proxy, Settings};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type FakeBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request the fake provider received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }
}

/// What the fake provider answers.
pub enum Reply {
    Json(StatusCode, Bytes),
    /// SSE pieces sent in order, each after its delay.
    Stream(Vec<(Duration, Bytes)>),
    /// SSE pieces the test feeds through the channel, one piece per message.
    Held(mpsc::Receiver<Bytes>),
    /// Waits, then answers.
    Delayed(Duration, Box<Reply>),
    /// Sends one piece, then breaks the connection.
    CutAfter(Bytes),
    /// Another reply with `Retry-After: seconds`.
    RetryAfter(u64, Box<Reply>),
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

/// A fake provider: a real HTTP server on 127.0.0.1 that records what it receives.
#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    pub hits: Arc<AtomicUsize>,
}

impl FakeProvider {
    pub async fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (rec, count) = (received.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, rec, count) = (handler.clone(), rec.clone(), count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, rec, count) = (handler.clone(), rec.clone(), count.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let received = Received {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            count.fetch_add(1, Ordering::SeqCst);
                            rec.lock().unwrap().push(received.clone());
                            let reply = handler(&received);
                            Ok::<_, Infallible>(respond(reply).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            hits,
        }
    }

    /// A provider answering every request with the same JSON.
    pub async fn json(status: u16, body: &'static str) -> Self {
        Self::start(move |_| {
            Reply::Json(
                StatusCode::from_u16(status).unwrap(),
                Bytes::from_static(body.as_bytes()),
            )
        })
        .await
    }

    /// A provider whose one stream sends what the test feeds through the returned
    /// channel, as it is fed.
    pub async fn held() -> (Self, mpsc::Sender<Bytes>) {
        let (feed, held) = mpsc::channel(8);
        let held = Mutex::new(Some(held));
        let provider =
            Self::start(move |_| Reply::Held(held.lock().unwrap().take().expect("one stream")))
                .await;
        (provider, feed)
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the provider received a request")
    }
}

async fn respond(reply: Reply) -> Response<FakeBody> {
    match reply {
        Reply::Json(status, body) => Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap(),
        Reply::Stream(pieces) => {
            let stream = futures_util::stream::iter(pieces).then(|(delay, piece)| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, BoxError>(Frame::data(piece))
            });
            sse_response(StreamBody::new(stream).boxed_unsync())
        }
        Reply::Held(rx) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let piece = rx.recv().await?;
                Some((Ok::<_, BoxError>(Frame::data(piece)), rx))
            });
            sse_response(StreamBody::new(stream).boxed_unsync())
        }
        Reply::Delayed(delay, reply) => {
            tokio::time::sleep(delay).await;
            Box::pin(respond(*reply)).await
        }
        Reply::RetryAfter(seconds, reply) => {
            let mut response = Box::pin(respond(*reply)).await;
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().unwrap());
            response
        }
        Reply::CutAfter(piece) => {
            let stream = futures_util::stream::iter([
                Ok(Frame::data(piece)),
                Err::<Frame<Bytes>, BoxError>("cut".into()),
            ])
            .then(|item| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                item
            });
            sse_response(StreamBody::new(stream).boxed_unsync())
        }
    }
}

fn sse_response(body: FakeBody) -> Response<FakeBody> {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// The gateway key every test consumer uses.
pub const KEY: &str = "sk-test-gateway-key-0001";
/// The provider key in test Secrets.
pub const PROVIDER_KEY: &str = "sk-provider-key-for-tests";

/// A temporary manifest directory, removed on drop.
pub struct Manifests {
    pub dir: PathBuf,
}

impl Manifests {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-proxy-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Writes `file` atomically (write then rename), as editors and ConfigMaps do.
    pub fn write(&self, file: &str, yaml: &str) -> &Self {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.join(file)).unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A consumer with `KEY` and its Secret.
pub fn consumer_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIConsumer
metadata: {{name: {name}}}
spec:
  keys: [{{secretRef: {{name: {name}-key, key: key}}}}]
{extra_spec}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-key}}
stringData: {{key: {KEY}}}
"#
    )
}

/// An openai-compatible provider at `url` serving `models` (name=upstream pairs).
pub fn provider_yaml(
    name: &str,
    kind: &str,
    url: &str,
    models: &[(&str, &str)],
    extra: &str,
) -> String {
    let models: String = models
        .iter()
        .map(|(name, upstream)| format!("    - {{name: {name}, upstreamName: {upstream}}}\n"))
        .collect();
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: {name}}}
spec:
  type: {kind}
  endpoint: {url}
  auth: {{secretRef: {{name: {name}-secret, key: apiKey}}}}
  models:
{models}{extra}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret}}
stringData: {{apiKey: {PROVIDER_KEY}}}
"#
    )
}

/// A route for `models` to one backend.
pub fn route_yaml(name: &str, models: &[&str], provider: &str, model: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: {name}}}
spec:
  models: [{}]
  backends: [{{provider: {provider}, model: {model}}}]
{extra}
"#,
        models.join(", ")
    )
}

/// Starts a proxy on `manifests` with default settings.
pub async fn proxy(manifests: &Manifests) -> Proxy {
    proxy_with(manifests, |_| {}).await
}

/// Starts a proxy on `manifests`, with settings adjusted by `adjust`.
pub async fn proxy_with(manifests: &Manifests, adjust: impl FnOnce(&mut Settings)) -> Proxy {
    let mut settings = Settings::for_manifests(manifests.path());
    adjust(&mut settings);
    switchboard_proxy::start(settings)
        .await
        .expect("proxy starts")
}

/// A client for the proxy.
pub fn client() -> reqwest::Client {
    switchboard_proxy::install_crypto_provider();
    reqwest::Client::builder().build().unwrap()
}

pub fn url(proxy: &Proxy, path: &str) -> String {
    format!("http://{}{}", proxy.addr, path)
}

/// POSTs `body` to `path` with the test key.
pub async fn post(proxy: &Proxy, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .post(url(proxy, path))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts an OpenAI-style error with `status` and `code`; returns the message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert!(
        response.headers().contains_key("x-request-id"),
        "x-request-id on every response"
    );
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], code, "error body: {body}");
    assert!(error["type"].is_string(), "error body: {body}");
    let message = error["message"].as_str().expect("message").to_string();
    assert!(!message.is_empty());
    message
}

pub fn sse(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus' text format (what `/metrics` serves); panics on a line it cannot
/// read, so a malformed exposition fails the test.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value after the series");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_string(), parse_labels(body))
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(mut body: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    while !body.is_empty() {
        let (name, rest) = body.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escape") {
                    (_, 'n') => value.push('\n'),
                    (_, c) => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        body = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The sum of the samples named `name` whose labels include every `(label, value)`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(l, v)| s.label(l) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Scrapes the proxy's `/metrics`.
pub async fn scrape(proxy: &Proxy) -> Vec<Sample> {
    let addr = proxy.metrics_addr.expect("metrics are on");
    let response = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    parse_metrics(&response.text().await.unwrap())
}
