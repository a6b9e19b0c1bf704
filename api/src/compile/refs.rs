//! Field checks shared by every pass: Secret lookups, durations, and the CRD's own CEL
//! rules. Each failure becomes a `Problem` whose message names the field and the fix.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::core::Duration as KubeDuration;
use kube::core::crd::CustomResourceExt;
use regex::Regex;
use serde::Serialize;

use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::status::Problem;
use crate::v1alpha1::condition::reasons;
use crate::v1alpha1::{DURATION_PATTERN, SecretKeyRef};

/// The value at `reference`, a Secret in `owner`'s namespace, trimmed of surrounding
/// whitespace (files made with `echo` end in a newline; no key contains whitespace).
pub(super) fn secret_value(
    inputs: &Inputs,
    owner: &ObjectKey,
    reference: &SecretKeyRef,
    field: &str,
) -> Result<String, Problem> {
    let key = owner.sibling(ObjectKind::Secret, &reference.name);
    let secret = inputs.secrets.get(&key).ok_or_else(|| {
        Problem::new(
            reasons::SECRET_NOT_FOUND,
            format!(
                "{field}: Secret {:?} not found in namespace {:?}; create it or fix the name",
                reference.name, owner.namespace
            ),
        )
    })?;
    let value = lookup(secret, &reference.key).ok_or_else(|| {
        Problem::new(
            reasons::SECRET_KEY_NOT_FOUND,
            format!(
                "{field}: Secret {:?} has no non-empty UTF-8 key {:?}; add it or fix the key",
                reference.name, reference.key
            ),
        )
    })?;
    Ok(value)
}

/// `stringData` wins over `data`, as the API server merges them.
fn lookup(secret: &Secret, key: &str) -> Option<String> {
    let raw = match secret.string_data.as_ref().and_then(|d| d.get(key)) {
        Some(value) => value.clone(),
        None => {
            let bytes = secret.data.as_ref()?.get(key)?;
            String::from_utf8(bytes.0.clone()).ok()?
        }
    };
    let trimmed = raw.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Parses an optional duration field (Gateway API syntax, e.g. `1m30s`) to milliseconds.
pub(super) fn duration_ms(value: Option<&str>, field: &str) -> Result<Option<u64>, Problem> {
    let Some(value) = value else { return Ok(None) };
    let invalid = || {
        Problem::new(
            reasons::INVALID,
            format!("{field}: {value:?} is not a duration; write it like 30s, 1m30s or 500ms"),
        )
    };
    // The CRD's pattern bounds the numbers, so parsing cannot overflow. Objects from a
    // cluster already passed it; objects from disk are checked here.
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(DURATION_PATTERN).unwrap_or_else(|_| unreachable!("the pattern is valid"))
    });
    if !PATTERN.is_match(value) {
        return Err(invalid());
    }
    let parsed = KubeDuration::from_str(value).map_err(|_| invalid())?;
    if parsed.is_negative() {
        return Err(invalid());
    }
    let duration: Duration = parsed.into();
    Ok(Some(
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// Evaluates the CRD's CEL rules, as the API server does at `kubectl apply`, so objects
/// read from disk are held to the same rules as objects in a cluster.
pub(super) fn cel_rules<K: CustomResourceExt + Serialize>(object: &K) -> Result<(), Problem> {
    let object = serde_json::to_value(object)
        .map_err(|e| Problem::new(reasons::INVALID, format!("cannot serialize: {e}")))?;
    CEL.with_borrow_mut(|cel| {
        let schema = cel
            .schemas
            .entry(K::crd_name())
            .or_insert_with(|| kube_cel::compile_schema(&crd_schema::<K>()));
        cel.validator.validate_compiled(schema, &object, None)
    })
    .map_err(|errors| {
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        Problem::new(reasons::INVALID, messages.join("; "))
    })
}

/// The CEL engine and each kind's rules, compiled once per thread: generating a CRD's
/// schema and compiling its rules costs about a millisecond, far more than checking an
/// object (`kube::core::cel::validate_cel` does both on every call).
struct Cel {
    validator: kube_cel::Validator,
    schemas: std::collections::HashMap<&'static str, kube_cel::CompiledSchema>,
}

thread_local! {
    static CEL: std::cell::RefCell<Cel> = std::cell::RefCell::new(Cel {
        validator: kube_cel::Validator::new(),
        schemas: std::collections::HashMap::new(),
    });
}

/// The openAPIV3Schema of a derived CRD, as kube's `validate_cel` reads it.
fn crd_schema<K: CustomResourceExt>() -> serde_json::Value {
    let crd = K::crd();
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|schema| serde_json::to_value(schema).ok())
        .unwrap_or_default()
}

/// Creation time, for "older object wins" decisions. Objects without one (files on disk)
/// sort first; ties fall back to namespace/name order, so the result never depends on
/// the order objects arrive in.
pub(super) fn age<K: Resource>(object: &K) -> Option<Time> {
    object.meta().creation_timestamp.clone()
}
