//! Switchboard proxy: the data plane. Serves OpenAI-compatible clients and routes their
//! requests to providers, from a Snapshot compiled by `switchboard_api::compile`.
//!
//! Follow a request: `server` -> `pipeline` -> `client_api` -> `auth` -> `routing` ->
//! `plan` (with `health`) -> attempts in `pipeline` -> `providers` -> `upstream` -> back
//! through `providers` and `client_api` -> `access_log`.

// Library code handles every error; tests may unwrap (see .clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod access_log;
pub mod auth;
pub mod body;
pub mod client_api;
pub mod error;
pub mod formats;
pub mod health;
pub mod ir;
pub mod pipeline;
pub mod plan;
pub mod providers;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod sse;
pub mod sync;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::pipeline::Gateway;
use crate::runtime::RuntimeHandle;
pub use crate::settings::Settings;

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// The address it listens on.
    pub addr: SocketAddr,
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
    let gateway = Arc::new(Gateway {
        runtime: RuntimeHandle::default(),
        settings: settings.clone(),
        draining: AtomicBool::new(false),
    });
    let sync = sync::start(&settings, gateway.clone())?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;

    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let serving_gateway = gateway.clone();
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = shutdown_rx.await;
        };
        server::serve(listener, serving_gateway, stop).await;
        drop(sync);
    });
    tracing::info!(%addr, "serving");
    Ok(Proxy {
        addr,
        gateway,
        shutdown,
        task,
    })
}

// === impl Proxy ===

impl Proxy {
    /// Stops accepting, waits for in-flight requests (bounded by the shutdown timeout).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// rustls needs one process-wide crypto provider; ring builds fast and everywhere.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
