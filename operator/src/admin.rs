//! The admin port: `/healthz`, `/readyz`, `/metrics` and two debug endpoints that show
//! state without secrets (`/debug/proxies`, `/debug/config`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;
use tokio::sync::watch;

use crate::http::{self as http_util, Body};
use crate::metrics::Metrics;
use crate::proxies::ProxyTable;
use crate::publish::Publisher;
use crate::reports::Reports;
use crate::status::Decided;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct Admin {
    pub identity: String,
    pub publisher: Publisher,
    pub proxies: Arc<ProxyTable>,
    pub reports: Reports,
    pub leader: watch::Receiver<bool>,
    pub decided: watch::Receiver<Arc<Decided>>,
    pub metrics: Arc<Metrics>,
}

// === impl Admin ===

impl Admin {
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<Body> {
        if request.method() != Method::GET {
            return http_util::error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        }
        match request.uri().path() {
            "/healthz" => http_util::respond(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => match self.publisher.current() {
                Some(current) => http_util::respond(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: serving config {}\n", current.version),
                ),
                None => http_util::respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: caches not synced or nothing compiled yet\n",
                ),
            },
            "/metrics" => {
                self.metrics.set_proxies(&self.proxies.connected());
                self.metrics.leader.set(i64::from(*self.leader.borrow()));
                http_util::respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/debug/proxies" => {
                let local = self.proxies.connected();
                let all = self.reports.all(local.clone());
                http_util::json(
                    StatusCode::OK,
                    &json!({
                        "replica": self.identity,
                        "leader": *self.leader.borrow(),
                        "version": self.publisher.current().map(|p| p.version.clone()),
                        "connected": local,
                        "allReplicas": all,
                    }),
                )
            }
            "/debug/config" => {
                let decided = self.decided.borrow().clone();
                let problems: Vec<_> = decided
                    .statuses
                    .iter()
                    .flat_map(|(key, status)| {
                        status.problems().map(move |c| {
                            json!({
                                "object": key.to_string(),
                                "condition": c.type_,
                                "reason": c.reason,
                                "message": c.message,
                            })
                        })
                    })
                    .collect();
                http_util::json(
                    StatusCode::OK,
                    &json!({
                        "version": decided.version,
                        "objects": decided.statuses.len(),
                        "problems": problems,
                    }),
                )
            }
            _ => http_util::error(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz, /metrics, /debug/proxies, /debug/config",
            ),
        }
    }
}
