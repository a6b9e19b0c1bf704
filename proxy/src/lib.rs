//! Switchboard proxy: the data plane. Serves OpenAI- and Anthropic-compatible clients
//! and routes their requests to providers, from a Snapshot compiled by
//! `switchboard_api::compile`.
//!
//! Modules in layers; each uses only layers below it, and leaves never use each other
//! (`scripts/module-graph.py` checks this in the test command):
//!
//! - shared vocabulary: `ir` (the types one step hands the next), `body`, `error`,
//!   `settings`, `tls`, `redis`;
//! - wire formats: `sse`, `formats`;
//! - leaves, one job each: `intake`, `client_api`, `auth`, `routing`, `cache`, `quota`,
//!   `plan`, `health`, `providers`, `upstream`, `metrics`, `access_log`, `telemetry`;
//! - config: `runtime` (a Snapshot and what each leaf prepares from it), `gateway`
//!   (what every request shares);
//! - orchestrators: `pipeline` (the request path as a script) and `finish` (the
//!   request's end);
//! - the process: `server`, `admin`, `sync`, and `start` here.
//!
//! Follow a request: `server` -> `pipeline` -> `auth` -> `intake` -> `client_api` ->
//! `routing` -> `cache` -> `quota` (in `pipeline::admission`) -> `plan` and `health`
//! (in `pipeline::attempts`) -> `providers` -> `upstream` -> `finish` (the reply as the
//! response, then cost, settle, `telemetry`, `metrics`, `access_log`).

// Library code handles every error; tests may unwrap (see .clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod cache;
pub mod client_api;
pub mod error;
pub mod finish;
pub mod formats;
pub mod gateway;
pub mod health;
pub mod intake;
pub mod ir;
pub mod log_output;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod providers;
pub mod quota;
pub mod redis;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod sse;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchboard_certs::ReloadingCert;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::cache::{Cache, CacheMetrics};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::quota::{QuotaMetrics, Quotas, RedisStore};
use crate::redis::SharedRedis;
use crate::settings::CacheStore;
pub use crate::settings::Settings;
pub use crate::tls::install_crypto_provider;

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where `/metrics` is served, unless metrics are off.
    pub metrics_addr: Option<SocketAddr>,
    /// With `--tls-cert`, the certificate served to clients (and its reload counts).
    pub tls: Option<Arc<ReloadingCert>>,
    pub gateway: Arc<Gateway>,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Loads the config (manifests, or the operator's), binds the listener and starts
/// serving. Fails if the manifests cannot be read or parsed; objects that do not
/// compile are logged and left out. From the operator, the proxy is ready once it
/// serves some Snapshot (from the operator or its cache on disk).
pub async fn start(settings: Settings) -> anyhow::Result<Proxy> {
    install_crypto_provider();
    let redis = shared_redis(&settings)?;
    let metrics = match settings.metrics_listen.0 {
        Some(_) => Some(Arc::new(
            Metrics::new(settings.metrics_consumer_label).context("cannot set up metrics")?,
        )),
        None => None,
    };
    let registry = metrics.as_ref().map(|m| m.registry());
    let cache_metrics = registry
        .map(CacheMetrics::register)
        .transpose()
        .context("cannot set up cache metrics")?;
    let quota_metrics = registry
        .map(|r| QuotaMetrics::register(r, settings.metrics_consumer_label, redis.is_some()))
        .transpose()
        .context("cannot set up quota metrics")?;
    let cache_in_redis = match settings.cache_store {
        CacheStore::Memory => None,
        CacheStore::Auto => redis.clone(),
        CacheStore::Redis => Some(
            redis
                .clone()
                .context("--cache-store redis needs --redis-url")?,
        ),
    };
    let cache = Arc::new(Cache::new(
        cache_in_redis,
        settings.cache_memory_bytes,
        cache_metrics,
    ));
    let quotas = Arc::new(Quotas::new(redis.map(RedisStore::new), quota_metrics));
    let gateway = Arc::new(Gateway::new(
        settings.clone(),
        metrics.clone(),
        quotas,
        cache,
    ));
    let (acceptor, tls) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            let (acceptor, resolver) =
                tls::client_acceptor(cert, key, settings.tls_reload_interval)?;
            (Some(acceptor), Some(resolver))
        }
        (None, None) => (None, None),
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let sync = sync::start(&settings, gateway.clone())?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let (metrics_addr, metrics_task) = match (settings.metrics_listen.0, metrics) {
        (Some(at), Some(metrics)) => {
            let listener = TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot serve metrics on {at}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, "serving metrics at /metrics");
            let task = tokio::spawn(admin::serve(listener, metrics, gateway.clone()));
            (Some(bound), Some(task))
        }
        _ => (None, None),
    };

    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let serving_gateway = gateway.clone();
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = shutdown_rx.await;
        };
        server::serve(listener, serving_gateway, acceptor, stop).await;
        drop(sync);
        // Metrics stay scrapeable while in-flight requests drain, then stop.
        if let Some(task) = metrics_task {
            task.abort();
        }
    });
    tracing::info!(%addr, tls = tls.is_some(), "serving");
    Ok(Proxy {
        addr,
        metrics_addr,
        tls,
        gateway,
        shutdown,
        task,
    })
}

/// Redis for quota counters and the cache, when `--redis-url` is set. Connects lazily.
fn shared_redis(settings: &Settings) -> anyhow::Result<Option<Arc<SharedRedis>>> {
    let Some(url) = &settings.redis_url else {
        return Ok(None);
    };
    let password = match &settings.redis_password_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --redis-password-file {}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    // The URL may carry a password: errors name neither.
    let redis = SharedRedis::new(url, password.as_deref(), settings.redis_timeout)
        .map_err(|_| anyhow::anyhow!("--redis-url is not a valid redis:// or rediss:// URL"))?;
    tracing::info!(address = %redis.address, "quota counters shared in Redis");
    Ok(Some(Arc::new(redis)))
}

// === impl Proxy ===

impl Proxy {
    /// Stops accepting, waits for in-flight requests (bounded by the shutdown timeout).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}
