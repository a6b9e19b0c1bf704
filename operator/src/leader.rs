//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews the Lease every `duration / 5`; another replica takes it over once it has seen
//! no renewal for `duration`. Updates use optimistic concurrency (resourceVersion), so
//! two replicas can never both win. Only the leader writes statuses and Events; every
//! replica watches, compiles and serves Snapshots.
//!
//! Expiry is judged by when this replica *observed* the last change, not by the
//! timestamps in the Lease, so clock skew between nodes does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// Which Lease, and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Runs the election until `shutdown` fires, then releases the Lease if held.
/// `leader` is set to whether this replica holds it.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut election = Election {
        api,
        config,
        observed: None,
        renewed: None,
    };
    let period = election.config.duration / 5;
    loop {
        let holds = match election.try_acquire_or_renew().await {
            Ok(holds) => holds,
            Err(error) => {
                tracing::warn!(%error, lease = %election.config.name, "cannot read or update the Lease");
                // Keep leading only while the last renewal is still valid.
                election
                    .renewed
                    .is_some_and(|at| at.elapsed() < election.config.duration - period)
            }
        };
        if *leader.borrow() != holds {
            tracing::info!(identity = %election.config.identity, leader = holds, "leadership changed");
        }
        leader.send_if_modified(|current| std::mem::replace(current, holds) != holds);
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => break,
        }
    }
    if *leader.borrow() {
        election.release().await;
        leader.send_replace(false);
    }
}

struct Election {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The holder and renew time last seen, and when they were first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// When this replica last renewed successfully.
    renewed: Option<Instant>,
}

impl Election {
    /// True when this replica holds the Lease after the attempt.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let observed_at = match &self.observed {
            Some((holder, renew, at)) if (holder, renew) == (&record.0, &record.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.0, record.1, observed_at));

        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let ours = holder == self.config.identity;
        let duration = spec
            .lease_duration_seconds
            .map_or(self.config.duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let free = holder.is_empty() || observed_at.elapsed() >= duration;
        if !ours && !free {
            self.renewed = None;
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            let acquired = spec.acquire_time.unwrap_or_else(|| now.clone());
            self.spec(acquired, now, transitions)
        } else {
            tracing::info!(previous = holder, "taking over the Lease");
            self.spec(now.clone(), now, transitions + 1)
        });
        // `replace` sends our resourceVersion: if another replica wrote first, 409.
        let result = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await;
        self.write(result)
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: i32::try_from(self.config.duration.as_secs()).ok(),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// A conflict means someone else wrote first: not leading, not an error.
    fn write(&mut self, result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
        match result {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.renewed = None;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up so another replica takes over at once, not after `duration`.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the Lease"),
            Err(error) => tracing::warn!(%error, "cannot release the Lease; it expires by itself"),
        }
    }
}
