//! Traces: the client's W3C `traceparent` reaches the provider; with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, the proxy exports a server span per request and a
//! client span per upstream attempt, with GenAI attributes, over OTLP/HTTP to a collector
//! (a fake one on loopback that decodes what it receives with the OTLP protobufs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use switchboard_e2e::fake_upstream::FakeUpstream;
use switchboard_e2e::{Proxy, TempDir, consumer, http_client, route};
use tokio::net::TcpListener;

const KEY: &str = "sk-e2e-tracing-key-0001";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OpenAI-compatible provider at `upstream`, route `chat` to its model `m`
/// (upstream name `m-upstream`).
fn manifests(upstream: &FakeUpstream) -> TempDir {
    let dir = TempDir::new("tracing");
    dir.write(
        "provider.yaml",
        &format!(
            "apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: up}}
spec:
  type: openai-compatible
  endpoint: {}
  auth: {{secretRef: {{name: up-key, key: apiKey}}}}
  models: [{{name: m, upstreamName: m-upstream}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: up-key}}
stringData: {{apiKey: sk-e2e-tracing-provider-key}}
",
            upstream.endpoint()
        ),
    );
    dir.write("route.yaml", &route("chat", &["chat"], "up", "m"));
    dir.write("consumer.yaml", &consumer("tracing-app", KEY));
    dir
}

async fn ask(proxy: &Proxy, traceparent: Option<&str>) -> reqwest::Response {
    let mut request = http_client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(
            &serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        );
    if let Some(traceparent) = traceparent {
        request = request
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=abc");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test]
async fn without_export_the_clients_trace_context_is_forwarded_as_it_came() {
    let upstream = FakeUpstream::start().await;
    let dir = manifests(&upstream);
    let proxy = Proxy::start(dir.path(), &[]).await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    ask(&proxy, Some(&traceparent)).await;
    ask(&proxy, None).await;

    let seen = upstream.headers();
    assert_eq!(
        header(&seen[0], "traceparent").as_deref(),
        Some(traceparent.as_str())
    );
    assert_eq!(
        header(&seen[0], "tracestate").as_deref(),
        Some("vendor=abc")
    );
    assert_eq!(header(&seen[1], "traceparent"), None, "none made up");
}

/// A received span and its resource's attributes.
type Received = (Span, Vec<(String, String)>);

/// An OTLP/HTTP collector on loopback that keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for resource in export.resource_spans {
                                let resource_attrs = resource
                                    .resource
                                    .map(|r| attributes(&r.attributes))
                                    .unwrap_or_default();
                                for scope in resource.scope_spans {
                                    for span in scope.spans {
                                        kept.lock()
                                            .unwrap_or_else(PoisonError::into_inner)
                                            .push((span, resource_attrs.clone()));
                                    }
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, spans, task }
    }

    /// Waits until `n` spans arrived; returns them with their resource's attributes.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self
                .spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans arrived",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attributes(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    attributes(&span.attributes)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn with_otlp_export_each_request_and_attempt_is_a_span_in_the_clients_trace() {
    let collector = Collector::start().await;
    let upstream = FakeUpstream::start().await;
    let dir = manifests(&upstream);
    let endpoint = format!("http://{}", collector.addr);
    let proxy = Proxy::start_with_env(
        dir.path(),
        &["--log-format", "json"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Export within 100 ms rather than the default 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    ask(&proxy, Some(&traceparent)).await;

    // The provider was called under the attempt's span, in the client's trace.
    let sent = header(&upstream.headers()[0], "traceparent").expect("a traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], TRACE_ID, "same trace: {sent}");
    assert_ne!(
        parts[2],
        CLIENT_SPAN,
        "a span of the proxy's: {sent}\n{}",
        proxy.logs()
    );

    let spans = collector.wait_for(2).await;
    let find = |name: &str| {
        spans
            .iter()
            .find(|(s, _)| s.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = spans.iter().map(|(s, _)| s.name.as_str()).collect();
                panic!("no span {name:?} in {names:?}")
            })
    };
    let (server, resource) = find("POST /v1/chat/completions");
    let (client, _) = find("chat m-upstream");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();

    assert!(
        resource.contains(&("service.name".to_string(), "switchboard-proxy".to_string())),
        "{resource:?}"
    );
    // Server span: child of the client's span, kind server, the request's attributes.
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    let expect = [
        ("http.response.status_code", "200"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "chat"),
        ("gen_ai.response.model", "m-upstream"),
        ("gen_ai.usage.input_tokens", "3"),
        ("gen_ai.usage.output_tokens", "5"),
        ("switchboard.route", "default/chat"),
        ("switchboard.provider", "default/up"),
        ("switchboard.attempts", "1"),
    ];
    for (key, value) in expect {
        assert_eq!(
            attribute(server, key).as_deref(),
            Some(value),
            "{key} on {server:?}"
        );
    }
    // Client span: child of the server span, the one whose id went upstream.
    assert_eq!(hex(&client.trace_id), TRACE_ID);
    assert_eq!(hex(&client.parent_span_id), hex(&server.span_id));
    assert_eq!(hex(&client.span_id), parts[2]);
    assert_eq!(client.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        attribute(client, "gen_ai.provider.name").as_deref(),
        Some("openai_compatible")
    );
    assert_eq!(
        attribute(client, "gen_ai.request.model").as_deref(),
        Some("m-upstream")
    );
    // Spans are exported, not logged.
    assert!(
        !proxy.logs().contains("switchboard::trace"),
        "{}",
        proxy.logs()
    );
}
