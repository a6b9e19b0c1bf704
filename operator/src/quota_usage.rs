//! AIQuota usage in status. With `--redis-url`, the leader reads each quota's counters
//! for the current windows every `--quota-status-interval` and writes consumed,
//! remaining and reset time per limit (per consumer for `PerConsumer` quotas, the most
//! used first), only when they changed. Proxies never wait on this: it reads what they
//! wrote. Without a shared store each proxy counts on its own and there is nothing to
//! report.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchboard_api::quota::{self as counters, SHARED_SCOPE};
use switchboard_api::snapshot::Quota;
use switchboard_api::v1alpha1::{AIQuota, QuotaScope, QuotaUsage};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::status::Decided;

/// Consumers listed per limit of a `PerConsumer` quota.
const TOP_CONSUMERS: usize = 20;
/// Keys read per Redis round trip.
const KEYS_PER_READ: usize = 1000;
/// The most a Redis read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads quota counters from Redis.
pub struct Counters {
    connection: ConnectionManager,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    /// Connects lazily to `url`, with `password` if given.
    pub fn new(url: &str, password: Option<&str>) -> anyhow::Result<Self> {
        let mut info = url
            .into_connection_info()
            .map_err(|_| anyhow::anyhow!("--redis-url is not a valid redis:// or rediss:// URL"))?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(READ_TIMEOUT))
            .set_response_timeout(Some(READ_TIMEOUT));
        Ok(Self {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
        })
    }

    async fn read(&self, keys: &[String]) -> anyhow::Result<Vec<i64>> {
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_READ) {
            let mut connection = self.connection.clone();
            let read: Vec<Option<i64>> = tokio::time::timeout(
                READ_TIMEOUT,
                redis::cmd("MGET").arg(chunk).query_async(&mut connection),
            )
            .await
            .map_err(|_| anyhow::anyhow!("Redis did not answer within {READ_TIMEOUT:?}"))??;
            values.extend(read.into_iter().map(Option::unwrap_or_default));
        }
        Ok(values)
    }
}

/// Refreshes usage while this replica leads, until the channels close.
pub async fn run(
    client: Client,
    counters: Counters,
    mut decided: watch::Receiver<Arc<Decided>>,
    mut leader: watch::Receiver<bool>,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut written: HashMap<String, Vec<QuotaUsage>> = HashMap::new();
    loop {
        if *leader.borrow_and_update() {
            let current = decided.borrow_and_update().clone();
            refresh(&client, &counters, &current, &mut written, &metrics).await;
        } else {
            written.clear();
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn refresh(
    client: &Client,
    counters: &Counters,
    decided: &Decided,
    written: &mut HashMap<String, Vec<QuotaUsage>>,
    metrics: &Metrics,
) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (id, quota) in &decided.quotas {
        let usage = match usage(counters, id, quota, &decided.consumers, now).await {
            Ok(usage) => usage,
            Err(error) => {
                tracing::warn!(quota = %id, %error, "cannot read quota usage; retried next interval");
                return;
            }
        };
        if written.get(id) == Some(&usage) {
            continue;
        }
        let Some((namespace, name)) = id.split_once('/') else {
            continue;
        };
        let api: Api<AIQuota> = Api::namespaced(client.clone(), namespace);
        let patch = Patch::Merge(serde_json::json!({ "status": { "usage": usage } }));
        match api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                metrics.status_patches.with(["ok"]).inc();
                written.insert(id.clone(), usage);
            }
            Err(error) => {
                metrics.status_patches.with(["error"]).inc();
                tracing::warn!(quota = %id, %error, "cannot write quota usage");
            }
        }
    }
    written.retain(|id, _| decided.quotas.contains_key(id));
}

/// The usage of every limit of `quota` in its current window.
async fn usage(
    counters: &Counters,
    id: &str,
    quota: &Quota,
    all_consumers: &[String],
    now: i64,
) -> anyhow::Result<Vec<QuotaUsage>> {
    let scopes: Vec<&str> = match quota.scope {
        QuotaScope::Shared => vec![SHARED_SCOPE],
        QuotaScope::PerConsumer => match &quota.consumers {
            Some(consumers) => consumers.iter().map(String::as_str).collect(),
            None => all_consumers.iter().map(String::as_str).collect(),
        },
    };
    let mut keys = Vec::new();
    for limit in &quota.limits {
        let (start, _) = counters::window_bounds(limit.window, now);
        keys.extend(
            scopes
                .iter()
                .map(|scope| counters::counter_key(id, limit, scope, start)),
        );
    }
    let values = counters.read(&keys).await?;
    let mut usage = Vec::new();
    for (i, limit) in quota.limits.iter().enumerate() {
        let (_, end) = counters::window_bounds(limit.window, now);
        let resets_at = Timestamp::from_second(end)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let name = counters::limit_name(limit);
        let mut rows: Vec<(f64, &str)> = scopes
            .iter()
            .enumerate()
            .map(|(j, scope)| {
                let units = values[i * scopes.len() + j];
                (counters::from_units(limit.metric, units), *scope)
            })
            .filter(|(consumed, scope)| *consumed > 0.0 || *scope == SHARED_SCOPE)
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        usage.extend(
            rows.into_iter()
                .take(TOP_CONSUMERS)
                .map(|(consumed, scope)| QuotaUsage {
                    limit: name.to_string(),
                    consumer: (scope != SHARED_SCOPE).then(|| scope.to_string()),
                    consumed,
                    remaining: limit.max - consumed,
                    resets_at: resets_at.clone(),
                }),
        );
    }
    Ok(usage)
}
