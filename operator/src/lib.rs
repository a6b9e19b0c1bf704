//! Switchboard operator: the control plane. Watches AIProvider, AIRoute, AIConsumer,
//! AIQuota and the Secrets they reference, compiles them with the same `compile()` the
//! standalone proxy uses, serves the Snapshot to proxies, and (the leader only) writes
//! statuses and Events.
//!
//! Follow an object: `watch` -> `reconcile` -> `api::compile_keeping` -> `publish` ->
//! `config_service` -> proxy `sync/operator` -> proxy `runtime`; and `reconcile` ->
//! `status` (with `proxies` and `reports` for `Programmed`).

// Library code handles every error; tests may unwrap (see .clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod config_service;
pub mod http;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod proxies;
pub mod publish;
pub mod quota_usage;
pub mod reconcile;
pub mod reports;
pub mod settings;
pub mod status;
pub mod token;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Config};
use tokio::sync::{Notify, watch as channel};
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::config_service::ConfigService;
use crate::leader::LeaseConfig;
use crate::metrics::Metrics;
use crate::proxies::ProxyTable;
use crate::publish::Publisher;
use crate::reconcile::Context;
pub use crate::settings::Settings;
use crate::status::{Decided, StatusWriter};
use crate::token::TokenFile;

/// How often the token file is re-read: a rotated token works within this.
const TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the operator until `shutdown` resolves, then gives up the Lease if held.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube_client(settings.kubeconfig.as_deref()).await?;
    let tls = http::tls_acceptor(
        &settings.tls_cert,
        &settings.tls_key,
        settings.tls_reload_interval,
    )?;
    let config_listener = http::bind(settings.config_listen, "config service").await?;
    let admin_listener = http::bind(settings.admin_listen, "admin").await?;
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);

    let mut tasks = JoinSet::new();
    let (stop_tx, stop_rx) = channel::channel(false);
    let trigger = Arc::new(Notify::new());
    let stores = watch::start(
        &client,
        &settings.namespaces,
        &trigger,
        &metrics,
        &mut tasks,
    );
    let publisher = Publisher::default();
    let table = Arc::new(ProxyTable::new(&settings.identity));
    let reports_changed = Arc::new(Notify::new());
    let lease = LeaseConfig {
        namespace: settings.lease_namespace.clone(),
        name: settings.lease_name.clone(),
        identity: settings.identity.clone(),
        duration: settings.lease_duration,
    };
    let (reports, report_writer) = reports::start(
        &client,
        &lease,
        table.clone(),
        reports_changed.clone(),
        stop_rx.clone(),
        &mut tasks,
    );

    let (leader_tx, leader_rx) = channel::channel(false);
    let election = tokio::spawn(leader::run(
        client.clone(),
        lease,
        leader_tx,
        stop_rx.clone(),
    ));

    let (decided_tx, decided_rx) = channel::channel(Arc::new(Decided::default()));
    let ctx = Arc::new(Context {
        stores: stores.clone(),
        publisher: publisher.clone(),
        metrics: metrics.clone(),
        debounce: settings.debounce,
        platform_namespace: settings.platform_namespace.clone(),
        decided: decided_tx,
    });
    tasks.spawn(reconcile::run(ctx, trigger));

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "switchboard-operator".to_string(),
            instance: Some(settings.identity.clone()),
        },
    );
    if let Some(url) = &settings.redis_url {
        let password = match &settings.redis_password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| {
                        format!("cannot read --redis-password-file {}", file.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let counters = quota_usage::Counters::new(url, password.as_deref())?;
        tasks.spawn(quota_usage::run(
            client.clone(),
            counters,
            decided_rx.clone(),
            leader_rx.clone(),
            settings.quota_status_interval,
            metrics.clone(),
        ));
    }
    let writer = StatusWriter::new(client.clone(), stores, recorder, metrics.clone());
    tasks.spawn(status::run(
        writer,
        decided_rx.clone(),
        leader_rx.clone(),
        table.clone(),
        reports.clone(),
        reports_changed,
    ));

    let config_service = Arc::new(ConfigService {
        publisher: publisher.clone(),
        proxies: table.clone(),
        token: TokenFile::watch(settings.token_file.clone(), TOKEN_REFRESH),
        poll_timeout: settings.poll_timeout,
        metrics: metrics.clone(),
    });
    let config_addr = config_listener.local_addr()?;
    tasks.spawn(http::serve(
        config_listener,
        Some(tls),
        move |request, peer| config_service.clone().handle(request, peer),
        stopped(stop_rx.clone()),
    ));
    let admin = Arc::new(Admin {
        identity: settings.identity.clone(),
        publisher,
        proxies: table,
        reports,
        leader: leader_rx,
        decided: decided_rx,
        metrics,
    });
    let admin_addr = admin_listener.local_addr()?;
    tasks.spawn(http::serve(
        admin_listener,
        None,
        move |request, peer| admin.clone().handle(request, peer),
        stopped(stop_rx),
    ));
    tracing::info!(
        identity = %settings.identity,
        config = %config_addr,
        admin = %admin_addr,
        namespaces = ?settings.namespaces,
        "operator started"
    );

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Give the Lease up and remove this replica's report (bounded), so another replica
    // leads at once and stops counting our proxies.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        futures_util::future::join(election, report_writer),
    )
    .await;
    tasks.shutdown().await;
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: channel::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A client from `--kubeconfig`, or inferred (in-cluster, then $KUBECONFIG/~/.kube/config).
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => Config::infer().await.context(
            "no Kubernetes config: not in a cluster, and no kubeconfig found (use --kubeconfig)",
        )?,
    };
    Client::try_from(config).context("cannot build a Kubernetes client")
}
