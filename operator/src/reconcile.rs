//! The control loop: stores -> `Inputs` -> `compile_keeping` -> publish -> statuses.
//!
//! Runs once the caches have synced, then after every change (debounced, so a
//! `kubectl apply` of many objects compiles once). Every replica runs it; the same
//! objects give the same Snapshot version everywhere.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_api::compile::{KeptCompile, LastGood, ObjectKey, compile_keeping};
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::status::Decided;
use crate::watch::Stores;

/// What the loop works with.
#[derive(Debug)]
pub struct Context {
    pub stores: Stores,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub debounce: Duration,
    /// The namespace whose routes are offered to, and quotas limit, every namespace.
    pub platform_namespace: Option<String>,
    /// The last compile's decisions, for the status writer and the debug endpoint.
    pub decided: watch::Sender<Arc<Decided>>,
}

/// Compiles on every change until the task is dropped.
pub async fn run(ctx: Arc<Context>, trigger: Arc<Notify>) {
    ctx.stores.ready().await;
    tracing::info!(stores = ?ctx.stores, "caches synced");
    let mut last_good: Option<LastGood> = None;
    loop {
        last_good = Some(compile_and_publish(&ctx, last_good).await);
        trigger.notified().await;
        // Let the rest of a burst arrive.
        tokio::time::sleep(ctx.debounce).await;
    }
}

/// One pass; returns what the next pass keeps broken objects from.
async fn compile_and_publish(ctx: &Context, last_good: Option<LastGood>) -> LastGood {
    let mut inputs = ctx.stores.inputs();
    inputs.platform_namespace = ctx.platform_namespace.clone();
    let started = Instant::now();
    // Compile is CPU work that grows with the object count: keep it off the runtime.
    let compiled =
        tokio::task::spawn_blocking(move || compile_keeping(&inputs, last_good.as_ref())).await;
    let kept = match compiled {
        Ok(kept) => kept,
        Err(error) => {
            // Compile does not panic on input (see api's tests); if it ever did, keep
            // serving what we have and say so.
            tracing::error!(%error, "compile failed; still serving the current config");
            return LastGood::default();
        }
    };
    ctx.metrics.compiles.inc();
    ctx.metrics
        .compile_duration
        .observe(started.elapsed().as_secs_f64());
    record_objects(ctx, &kept);

    let snapshot = &kept.compiled.snapshot;
    if ctx.publisher.publish(snapshot) {
        ctx.metrics.publishes.inc();
        ctx.metrics.config_info.reset();
        ctx.metrics
            .config_info
            .with([snapshot.version.as_str()])
            .set(1);
        tracing::info!(
            version = %snapshot.version,
            providers = snapshot.providers.len(),
            routes = snapshot.routes.len(),
            consumers = snapshot.consumers.len(),
            quotas = snapshot.quotas.len(),
            kept = kept.kept.len(),
            "config published"
        );
    }
    for key in &kept.kept {
        tracing::warn!(object = %key, "object is broken; its last accepted version keeps serving (see its status)");
    }
    let programmable: BTreeSet<ObjectKey> = kept
        .last_good
        .accepted_keys()
        .difference(&kept.kept)
        .cloned()
        .collect();
    ctx.decided.send_replace(Arc::new(Decided {
        statuses: kept.compiled.statuses,
        programmable,
        version: snapshot.version.clone(),
        quotas: snapshot.quotas.clone(),
        consumers: snapshot.consumers.keys().cloned().collect(),
    }));
    kept.last_good
}

fn record_objects(ctx: &Context, kept: &KeptCompile) {
    ctx.metrics.objects.reset();
    for (key, status) in &kept.compiled.statuses {
        let accepted = if status.is_accepted() {
            "true"
        } else {
            "false"
        };
        ctx.metrics
            .objects
            .with([key.kind.to_string().as_str(), accepted])
            .inc();
    }
    ctx.metrics
        .kept_objects
        .set(i64::try_from(kept.kept.len()).unwrap_or(i64::MAX));
}
