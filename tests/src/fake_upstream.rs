//! A fake OpenAI-compatible provider on loopback for the end-to-end tests: answers every
//! `POST /v1/chat/completions` with a fixed completion and records the headers each
//! request carried, so a test can see which key (or trace context) the proxies send.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

/// A running fake provider; stops when dropped.
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let headers = Arc::new(Mutex::new(Vec::new()));
        let seen = headers.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(request.headers().clone());
                        let body = json!({
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "created": 1,
                            "model": "fake-model",
                            "choices": [{
                                "index": 0,
                                "message": {"role": "assistant", "content": "hello from the fake upstream"},
                                "finish_reason": "stop"
                            }],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
                        });
                        let response = json_response(200, body.to_string());
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            headers,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the endpoint an AIProvider points at.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The headers of the requests received, in order.
    pub fn headers(&self) -> Vec<http::HeaderMap> {
        self.headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The API keys of the requests received, in order.
    pub fn keys(&self) -> Vec<String> {
        self.headers()
            .iter()
            .map(|h| {
                h.get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .trim_start_matches("Bearer ")
                    .to_string()
            })
            .collect()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JSON response with `status`, as the fake servers of the tests answer.
pub fn json_response(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
}
