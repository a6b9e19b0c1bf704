//! The metrics port: `GET /metrics` in Prometheus' text format, apart from client
//! traffic so that scrapes need no gateway key and clients cannot read metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::{Body, full};
use crate::gateway::Gateway;
use crate::health::CircuitView;
use crate::metrics::{CircuitState, Metrics};

/// A scraper must send its request head within this time (each one, on a kept-alive
/// connection: so it is also how long an idle connection stays).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Scrapes served at once; past it a new connection is closed at once. Scrapers are a
/// few Prometheus servers: this only stops a runaway client from taking descriptors
/// the client port needs.
const MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, gateway: Arc<Gateway>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let (metrics, gateway) = (metrics.clone(), gateway.clone());
        tokio::spawn(async move {
            let _place = place;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&request, &metrics, &gateway);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Every metric, with the gauges read at scrape time brought up to date: circuit
/// states and the in-memory cache's size.
fn scrape(metrics: &Metrics, gateway: &Gateway) -> Vec<u8> {
    gateway.cache.measure_memory();
    let runtime = gateway.runtime.current();
    let now = std::time::Instant::now();
    let circuits = runtime.iter().flat_map(|r| r.circuits(now));
    metrics.circuits(circuits.map(|(provider, model, view)| {
        let state = match view {
            CircuitView::Closed => CircuitState::Closed,
            CircuitView::HalfOpen => CircuitState::HalfOpen,
            CircuitView::Ejected(_) => CircuitState::Open,
        };
        (provider, model, state)
    }));
    metrics.render(runtime.as_ref().map(|r| r.snapshot.as_ref()))
}

fn respond(request: &Request<Incoming>, metrics: &Metrics, gateway: &Gateway) -> Response<Body> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(metrics, gateway),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            b"use GET\n".to_vec(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"not found: metrics are at /metrics\n".to_vec(),
        ),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
