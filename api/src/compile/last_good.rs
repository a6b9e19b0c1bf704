//! Compiling against the serving config: an object that the serving config accepted and
//! that would now be rejected keeps its last accepted version.
//!
//! Why: in a cluster, many teams edit objects independently. A deleted Secret or a typo
//! in one team's AIProvider must not take that provider, and every route through it, out
//! of every proxy the moment it is applied; nor may it hold back other teams' changes,
//! as refusing the whole config would. The broken object's status says what is wrong and
//! that its last accepted version still serves; fixing it takes effect at once. Deleting
//! an object is deliberate and takes effect at once too.
//!
//! The standalone proxy does not use this: one person edits its files and watches its
//! log, so it refuses the whole reload instead (`proxy/src/sync/manifests.rs`).

use std::collections::BTreeSet;

use super::{Compiled, Inputs, ObjectKey, compile};
use crate::v1alpha1::condition::types;

/// Appended to the `Accepted` message of an object that keeps its last accepted version.
pub const KEPT_NOTE: &str =
    "Proxies keep serving the last accepted version of this object until it is fixed.";

/// The inputs of the serving config and the objects it accepted.
#[derive(Clone, Debug, Default)]
pub struct LastGood {
    inputs: Inputs,
    accepted: BTreeSet<ObjectKey>,
}

/// The result of `compile_keeping`.
#[derive(Clone, Debug)]
pub struct KeptCompile {
    /// The Snapshot to serve, and statuses as the objects are now (broken ones say so).
    pub compiled: Compiled,
    /// What was compiled: the inputs, with the last accepted version of kept objects.
    pub effective: Inputs,
    /// Objects whose last accepted version (or that of a Secret they read) was used.
    pub kept: BTreeSet<ObjectKey>,
    /// What the next compile keeps objects from, once this result serves.
    pub last_good: LastGood,
}

// === impl LastGood ===

impl LastGood {
    /// `compiled` must be the result of compiling `inputs`.
    pub fn new(inputs: Inputs, compiled: &Compiled) -> Self {
        let accepted = compiled
            .statuses
            .iter()
            .filter(|(_, status)| status.is_accepted())
            .map(|(key, _)| key.clone())
            .collect();
        Self { inputs, accepted }
    }

    /// The objects the serving config accepted.
    pub fn accepted_keys(&self) -> &BTreeSet<ObjectKey> {
        &self.accepted
    }

    /// Whether the serving config accepted this object.
    pub fn accepted(&self, key: &ObjectKey) -> bool {
        self.accepted.contains(key)
    }
}

/// Compiles `inputs`; objects `last_good` accepted that would now be rejected compile
/// from their last accepted version instead (with the Secrets they read then).
pub fn compile_keeping(inputs: &Inputs, last_good: Option<&LastGood>) -> KeptCompile {
    let first = compile(inputs);
    let Some(last_good) = last_good else {
        return KeptCompile {
            last_good: LastGood::new(inputs.clone(), &first),
            compiled: first,
            effective: inputs.clone(),
            kept: BTreeSet::new(),
        };
    };
    let mut effective = inputs.clone();
    let mut restored: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut compiled = first.clone();
    // Each round restores the objects that regressed; restoring a provider can only make
    // routes, consumers and quotas valid again, so a few rounds reach a fixed point.
    for _ in 0..5 {
        let regressed: Vec<ObjectKey> = last_good
            .accepted
            .iter()
            .filter(|key| !restored.contains(*key))
            .filter(|key| {
                compiled
                    .statuses
                    .get(*key)
                    .is_some_and(|s| !s.is_accepted())
            })
            .cloned()
            .collect();
        if regressed.is_empty() {
            break;
        }
        for key in regressed {
            restore(&mut effective, &last_good.inputs, &key);
            restored.insert(key);
        }
        compiled = compile(&effective);
    }

    // Taken before kept objects get their real (failing) statuses below: the next
    // compile must know their last version is serving.
    let next_last_good = LastGood::new(effective.clone(), &compiled);

    // Objects whose own input (or a Secret it reads) was replaced report their real
    // state; the rest (say, a route that regressed only because its provider did)
    // report the state they serve in.
    let kept: BTreeSet<ObjectKey> = restored
        .into_iter()
        .filter(|key| differs(inputs, &last_good.inputs, key))
        .collect();
    for key in &kept {
        if let Some(status) = first.statuses.get(key) {
            let mut status = status.clone();
            for condition in &mut status.conditions {
                if condition.type_ == types::ACCEPTED {
                    condition.message = format!("{} {KEPT_NOTE}", condition.message);
                }
            }
            compiled.statuses.insert(key.clone(), status);
        }
    }
    KeptCompile {
        compiled,
        effective,
        kept,
        last_good: next_last_good,
    }
}

/// Puts `key`'s version in `last` into `effective`, with the Secrets it read then.
fn restore(effective: &mut Inputs, last: &Inputs, key: &ObjectKey) {
    for secret in last.secret_refs(key) {
        if let Some(object) = last.get(&secret) {
            effective.insert(object);
        }
    }
    if let Some(object) = last.get(key) {
        effective.insert(object);
    }
}

/// Whether `key` or a Secret it reads differs between the two inputs.
fn differs(now: &Inputs, last: &Inputs, key: &ObjectKey) -> bool {
    let same = |key: &ObjectKey| {
        let a = now.get(key).map(|o| o.to_value());
        let b = last.get(key).map(|o| o.to_value());
        a == b
    };
    !same(key) || last.secret_refs(key).iter().any(|s| !same(s))
}
