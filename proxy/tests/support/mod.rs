//! Test support: fake providers as real HTTP servers on loopback, manifest directories,
//! and an in-process proxy bound to 127.0.0.1:0.

#![allow(dead_code)]

use std::collections::BTreeMap;
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
pub type FakeBody = UnsyncBoxBody<Bytes, BoxError>;

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
    /// `status` with `content_type` and a body of the given pieces, sent as fast as the
    /// connection takes them (chunked: no Content-Length).
    Pieces(StatusCode, &'static str, Vec<Bytes>),
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
        Reply::Pieces(status, content_type, pieces) => Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(
                StreamBody::new(futures_util::stream::iter(
                    pieces
                        .into_iter()
                        .map(|p| Ok::<_, BoxError>(Frame::data(p))),
                ))
                .boxed_unsync(),
            )
            .unwrap(),
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

/// Runs a Python `script` that uses the official SDKs (scripts/test.sh installs them)
/// against `proxy`, and returns what it printed. The script finds the gateway in
/// `SWITCHBOARD_URL` and the test key in `SWITCHBOARD_KEY`; the SDKs' own key and
/// base-URL variables are cleared, and loopback bypasses any HTTP proxy. Fails the test
/// if the script fails or runs past two minutes.
pub async fn sdk_script(proxy: &Proxy, script: &str) -> String {
    let mut command = tokio::process::Command::new("python3");
    command
        .args(["-c", script])
        .env("SWITCHBOARD_URL", url(proxy, "/"))
        .env("SWITCHBOARD_KEY", KEY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true);
    for variable in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
    ] {
        command.env_remove(variable);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the SDK script ends within 120 s")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the SDK script failed (scripts/test.sh installs the SDKs):\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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

/// A field of this process's `/proc/self/status`, in KiB: `VmHWM` (peak resident
/// memory) or `VmPeak` (peak address space, which an allocation that is never touched
/// still grows). In-process proxies run in this process.
pub fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
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

/// A parsed exposition: its samples, and the metric families its `# TYPE` lines
/// declare. Derefs to the samples.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> type (`counter`, `gauge`, `histogram`, ...).
    pub families: BTreeMap<String, String>,
    /// Family name -> help text.
    pub help: BTreeMap<String, String>,
}

impl std::ops::Deref for Scrape {
    type Target = [Sample];
    fn deref(&self) -> &[Sample] {
        &self.samples
    }
}

impl Scrape {
    /// The family a sample name belongs to: itself, or a histogram's or summary's
    /// `_bucket`, `_sum` or `_count` series.
    pub fn family_of(&self, sample: &str) -> Option<&str> {
        if let Some((name, _)) = self.families.get_key_value(sample) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            let (name, kind) = self.families.get_key_value(base)?;
            let fits = match *suffix {
                "_bucket" => kind == "histogram",
                _ => kind == "histogram" || kind == "summary",
            };
            fits.then_some(name.as_str())
        })
    }

    /// The sum of the samples named `name` whose labels include every `(label, value)`,
    /// or `None` when there is no such sample. For bounded waits; assertions use
    /// `metric` or `metric_or_zero`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(l, v)| s.label(l) == Some(*v)))
            .peekable();
        matching.peek()?;
        Some(matching.map(|s| s.value).sum())
    }

    /// The series named `name`, for failure messages.
    fn series(&self, name: &str) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(l, v)| format!("{l}={v:?}")).collect();
                format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
            })
            .collect()
    }
}

/// Parses Prometheus' text format (what `/metrics` serves), keeping the `# HELP` and
/// `# TYPE` lines; panics on a line it cannot read, on a family declared twice, and on
/// a sample of no declared family, so a malformed exposition fails the test.
pub fn parse_metrics(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if let Some(declared) = comment.strip_prefix("TYPE ") {
                let (name, kind) = declared
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("a type after the name in {line:?}"));
                let earlier = scrape.families.insert(name.to_string(), kind.to_string());
                assert!(earlier.is_none(), "{name} declared twice: {line:?}");
            } else if let Some(help) = comment.strip_prefix("HELP ") {
                let (name, help) = help.split_once(' ').unwrap_or((help, ""));
                scrape.help.insert(name.to_string(), help.to_string());
            }
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
        assert!(
            scrape.family_of(&name).is_some(),
            "sample {name} before or without its # TYPE line: {line:?}"
        );
        scrape.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    scrape
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
/// Panics when there is no such sample: a renamed metric or label fails the test
/// instead of reading as 0.
pub fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.get(name, labels).unwrap_or_else(|| {
        let series = scrape.series(name);
        if series.is_empty() {
            panic!(
                "no metric {name} in the scrape; families: {:?}",
                scrape.families.keys().collect::<Vec<_>>()
            )
        }
        panic!(
            "no {name} sample with labels {labels:?}; its series:\n  {}",
            series.join("\n  ")
        )
    })
}

/// As `metric`, but 0 when no sample matches, for a test that means "absent or
/// zero". Still panics unless the exposition declares the family (`# TYPE`) and some
/// sample of `name` carries every label name asked about, so a renamed metric or label
/// fails the test instead of reading as 0.
pub fn metric_or_zero(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    assert_known(scrape, name, labels);
    scrape.get(name, labels).unwrap_or(0.0)
}

/// Tokens of `kind` (`gen_ai_token_type`) counted on route `default/r`, the route the
/// usage tests send through.
pub fn tokens(scrape: &Scrape, kind: &str) -> f64 {
    metric_or_zero(
        scrape,
        "switchboard_tokens_total",
        &[("route", "default/r"), ("gen_ai_token_type", kind)],
    )
}

/// The cost counted on route `default/r`.
pub fn cost(scrape: &Scrape) -> f64 {
    metric_or_zero(
        scrape,
        "switchboard_cost_usd_total",
        &[("route", "default/r")],
    )
}

/// Scrapes until route `default/r` has output tokens counted (a stream settles when it
/// is over), for at most a second.
pub async fn settled(proxy: &Proxy) -> Scrape {
    let mut now = scrape(proxy).await;
    for _ in 0..50 {
        if tokens(&now, "output") > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        now = scrape(proxy).await;
    }
    now
}

/// Asserts that no sample named `name` has all of `labels`, where the exposition
/// declares the family and some sample of `name` carries every label name asked about
/// (so a renamed metric or label fails instead of passing).
pub fn assert_absent(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) {
    assert_known(scrape, name, labels);
    let found: Vec<String> = scrape
        .series(name)
        .into_iter()
        .zip(scrape.samples.iter().filter(|s| s.name == name))
        .filter(|(_, s)| labels.iter().all(|(l, v)| s.label(l) == Some(*v)))
        .map(|(text, _)| text)
        .collect();
    assert!(
        found.is_empty(),
        "expected no {name} sample with labels {labels:?}, found:\n  {}",
        found.join("\n  ")
    );
}

/// Panics unless the exposition declares the family of `name` and some sample of
/// `name` carries every label name in `labels`.
fn assert_known(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) {
    assert!(
        scrape.family_of(name).is_some(),
        "metric family of {name} is unknown to the exposition; families: {:?}",
        scrape.families.keys().collect::<Vec<_>>()
    );
    for (label, _) in labels {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.name == name && s.label(label).is_some()),
            "no {name} series has a label {label:?}; its series:\n  {}",
            scrape.series(name).join("\n  ")
        );
    }
}

/// Scrapes the proxy's `/metrics`.
pub async fn scrape(proxy: &Proxy) -> Scrape {
    let addr = proxy.metrics_addr.expect("metrics are on");
    let response = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    parse_metrics(&response.text().await.unwrap())
}
