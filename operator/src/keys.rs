//! `switchboard-operator keys`: gateway keys of an AIConsumer, made and revoked without
//! anyone choosing (or seeing, beyond the one time it is printed) the key.
//!
//! A key is 256 bits from the operating system's random source, written as `sk-sb-`
//! and 43 characters of unpadded base64url (`A-Z a-z 0-9 - _`): 49 characters in all.
//! It lives in a Secret of its own (`data.key`) in the consumer's namespace, annotated
//! (and, when the name fits a label value, labelled) `switchboard.dev/consumer=<name>`
//! and owned by the AIConsumer, so deleting the consumer deletes its keys. The
//! AIConsumer's `spec.keys` gains a reference to it; existing keys stay, so rotation is
//! create, move clients, revoke.
//!
//! Writes to `spec.keys` are merge patches carrying the resourceVersion read, so a
//! concurrent edit is retried rather than overwritten.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use switchboard_api::v1alpha1::AIConsumer;

/// What every key made here starts with.
pub const KEY_PREFIX: &str = "sk-sb-";
/// Random bytes in a key.
pub const KEY_BYTES: usize = 32;
/// Characters in a key: the prefix and 32 bytes in unpadded base64url.
pub const KEY_LEN: usize = KEY_PREFIX.len() + (KEY_BYTES * 4).div_ceil(3);
/// The annotation (and label, when the name fits one) naming the consumer a Secret
/// made here belongs to.
pub const CONSUMER_LABEL: &str = "switchboard.dev/consumer";
/// The Secret data key the gateway key is stored under (unless an existing reference
/// names another).
pub const SECRET_KEY: &str = "key";
/// The most keys an AIConsumer may have (`spec.keys` maxItems).
pub const MAX_KEYS: usize = 16;
/// Attempts at the `spec.keys` patch when someone else edits the consumer meanwhile.
const PATCH_ATTEMPTS: usize = 5;

/// An AIConsumer, as `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRef {
    pub namespace: String,
    pub name: String,
}

/// A gateway key. Never printed by `Debug`; `expose` is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayKey(String);

/// What `create` did.
#[derive(Debug)]
pub struct Created {
    /// Name of the new Secret, in the consumer's namespace.
    pub secret: String,
    pub key: GatewayKey,
    /// Keys the consumer has now, this one included.
    pub keys: usize,
    /// False when the consumer already referenced the Secret (which did not exist):
    /// the key filled that reference and `spec.keys` was left as it was.
    pub added: bool,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Keys the consumer has left.
    pub remaining: usize,
    pub secret: SecretOutcome,
}

/// What became of the revoked key's Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOutcome {
    Deleted,
    /// Already gone.
    Missing,
    /// Not made by `keys create` for this consumer: left for its owner.
    KeptNotOurs,
    /// Another AIConsumer in the namespace references it too.
    KeptStillReferenced(String),
}

/// One of a consumer's keys, as `list` shows it: never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub secret: String,
    /// The data key inside the Secret.
    pub key: String,
    /// Whether the Secret exists.
    pub exists: bool,
    /// The Secret's creationTimestamp, RFC 3339.
    pub created: Option<String>,
    /// Whether `keys create` made it for this consumer.
    pub managed: bool,
}

// === impl ConsumerRef ===

impl FromStr for ConsumerRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((namespace, name)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not NAMESPACE/NAME (for example team-a/my-app)"
            ));
        };
        if !is_dns_label(namespace) {
            return Err(format!("{namespace:?} is not a valid namespace name"));
        }
        if !is_dns_subdomain(name) {
            return Err(format!("{name:?} is not a valid AIConsumer name"));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for ConsumerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl GatewayKey ===

impl GatewayKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|error| anyhow!("the operating system's random source failed: {error}"))?;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        bytes.fill(0);
        Ok(Self(format!("{KEY_PREFIX}{encoded}")))
    }

    /// The key itself, to print once or store.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayKey(<redacted>)")
    }
}

// === commands ===

/// Makes a key, stores it in a new Secret (`secret`, or `<consumer>-key-<random>`) and
/// adds the reference to the consumer's `spec.keys`. If the reference cannot be added,
/// the Secret is deleted again.
///
/// When the consumer already references `secret` and that Secret does not exist (an
/// AIConsumer needs a key reference to be created at all, so it may be applied naming
/// a Secret yet to be made), the key fills it, under the data key the reference names,
/// and `spec.keys` stays as it is.
pub async fn create(
    client: &Client,
    consumer: &ConsumerRef,
    secret: Option<&str>,
) -> anyhow::Result<Created> {
    let consumers: Api<AIConsumer> = Api::namespaced(client.clone(), &consumer.namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &consumer.namespace);
    let current = get_consumer(&consumers, consumer).await?;
    let name = match secret {
        Some(name) if is_dns_subdomain(name) => name.to_string(),
        Some(name) => bail!("{name:?} is not a valid Secret name (a lowercase DNS subdomain)"),
        None => default_secret_name(&consumer.name)?,
    };
    let referenced = current
        .spec
        .keys
        .iter()
        .find(|k| k.secret_ref.name == name)
        .map(|k| k.secret_ref.key.clone());
    if referenced.is_none() {
        check_can_add(&current, consumer, &name)?;
    }

    let key = GatewayKey::generate()?;
    let data_key = referenced.as_deref().unwrap_or(SECRET_KEY);
    let object = key_secret(&current, consumer, &name, data_key, &key)?;
    match secrets.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => bail!(
            "Secret {}/{name} already exists; keys create never overwrites a Secret: choose another --secret",
            consumer.namespace
        ),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot create Secret {}/{name}", consumer.namespace));
        }
    }
    if referenced.is_some() {
        return Ok(Created {
            secret: name,
            key,
            keys: current.spec.keys.len(),
            added: false,
        });
    }
    let added = edit_keys(&consumers, consumer, |keys| {
        check_room(keys, consumer, &name)?;
        keys.push(json!({"secretRef": {"name": name, "key": SECRET_KEY}}));
        Ok(())
    })
    .await;
    match added {
        Ok(keys) => Ok(Created {
            secret: name,
            key,
            keys,
            added: true,
        }),
        Err(error) => {
            // Leave nothing behind: a key nobody references is just a loose secret.
            let _ = secrets.delete(&name, &DeleteParams::default()).await;
            Err(error.context(format!(
                "the key was not added; Secret {}/{name} was deleted again",
                consumer.namespace
            )))
        }
    }
}

/// Removes the reference to `secret` from the consumer's `spec.keys`, then deletes the
/// Secret if `keys create` made it for this consumer and no other consumer references
/// it. Refuses to remove the last key (the CRD requires one).
pub async fn revoke(
    client: &Client,
    consumer: &ConsumerRef,
    secret: &str,
) -> anyhow::Result<Revoked> {
    let consumers: Api<AIConsumer> = Api::namespaced(client.clone(), &consumer.namespace);
    let remaining = edit_keys(&consumers, consumer, |keys| {
        let before = keys.len();
        keys.retain(|entry| secret_name(entry) != Some(secret));
        if keys.len() == before {
            let names: Vec<&str> = keys.iter().filter_map(secret_name).collect();
            bail!(
                "AIConsumer {consumer} has no key in Secret {secret:?}; its keys are in: {}",
                names.join(", ")
            );
        }
        if keys.is_empty() {
            bail!(
                "refusing to revoke the last key of AIConsumer {consumer}: an AIConsumer needs at \
                 least one key; create a new one first (keys create), or delete the AIConsumer"
            );
        }
        Ok(())
    })
    .await?;

    let secrets: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(client.clone(), &consumer.namespace);
    let Some(meta) = secrets
        .get_opt(secret)
        .await
        .with_context(|| format!("cannot read Secret {}/{secret}", consumer.namespace))?
    else {
        return Ok(Revoked {
            remaining,
            secret: SecretOutcome::Missing,
        });
    };
    if !made_for(&meta.metadata, &consumer.name) {
        return Ok(Revoked {
            remaining,
            secret: SecretOutcome::KeptNotOurs,
        });
    }
    let others = consumers
        .list(&Default::default())
        .await
        .with_context(|| format!("cannot list AIConsumers in {}", consumer.namespace))?;
    let other = others.items.iter().find(|other| {
        other.metadata.name.as_deref() != Some(consumer.name.as_str())
            && other
                .spec
                .keys
                .iter()
                .any(|key| key.secret_ref.name == secret)
    });
    if let Some(other) = other {
        return Ok(Revoked {
            remaining,
            secret: SecretOutcome::KeptStillReferenced(
                other.metadata.name.clone().unwrap_or_default(),
            ),
        });
    }
    let plain: Api<Secret> = Api::namespaced(client.clone(), &consumer.namespace);
    match plain.delete(secret, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "the key was revoked, but Secret {}/{secret} could not be deleted",
                    consumer.namespace
                )
            });
        }
    }
    Ok(Revoked {
        remaining,
        secret: SecretOutcome::Deleted,
    })
}

/// The consumer's keys: Secret names and metadata, never values (Secrets are read as
/// metadata only).
pub async fn list(client: &Client, consumer: &ConsumerRef) -> anyhow::Result<Vec<KeyInfo>> {
    let consumers: Api<AIConsumer> = Api::namespaced(client.clone(), &consumer.namespace);
    let secrets: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(client.clone(), &consumer.namespace);
    let current = get_consumer(&consumers, consumer).await?;
    let mut keys = Vec::new();
    for key in &current.spec.keys {
        let name = &key.secret_ref.name;
        let meta = secrets
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read Secret {}/{name}", consumer.namespace))?;
        keys.push(KeyInfo {
            secret: name.clone(),
            key: key.secret_ref.key.clone(),
            exists: meta.is_some(),
            created: meta
                .as_ref()
                .and_then(|m| m.metadata.creation_timestamp.as_ref())
                .map(|t| t.0.to_string()),
            managed: meta
                .as_ref()
                .is_some_and(|m| made_for(&m.metadata, &consumer.name)),
        });
    }
    Ok(keys)
}

/// `list`'s result as a table.
pub fn render(keys: &[KeyInfo]) -> String {
    let rows: Vec<[String; 4]> = keys
        .iter()
        .map(|k| {
            [
                k.secret.clone(),
                k.key.clone(),
                k.created.clone().unwrap_or_else(|| "-".into()),
                match (k.exists, k.managed) {
                    (false, _) => "missing".into(),
                    (true, true) => "keys create".into(),
                    (true, false) => "user".into(),
                },
            ]
        })
        .collect();
    let header = ["SECRET", "KEY", "CREATED", "MADE BY"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

// === helpers ===

async fn get_consumer(api: &Api<AIConsumer>, consumer: &ConsumerRef) -> anyhow::Result<AIConsumer> {
    api.get_opt(&consumer.name)
        .await
        .with_context(|| format!("cannot read AIConsumer {consumer}"))?
        .ok_or_else(|| {
            anyhow!(
                "AIConsumer {consumer} not found (kubectl get aiconsumers -n {} lists them)",
                consumer.namespace
            )
        })
}

/// Refusals before anything is written.
fn check_can_add(current: &AIConsumer, consumer: &ConsumerRef, name: &str) -> anyhow::Result<()> {
    let keys: Vec<Value> = current
        .spec
        .keys
        .iter()
        .map(|k| json!({"secretRef": {"name": k.secret_ref.name}}))
        .collect();
    check_room(&keys, consumer, name)
}

fn check_room(keys: &[Value], consumer: &ConsumerRef, name: &str) -> anyhow::Result<()> {
    if keys.iter().any(|k| secret_name(k) == Some(name)) {
        bail!("AIConsumer {consumer} already has a key in Secret {name:?}");
    }
    if keys.len() >= MAX_KEYS {
        bail!(
            "AIConsumer {consumer} already has {MAX_KEYS} keys, the most it may have: revoke one first"
        );
    }
    Ok(())
}

/// Reads the consumer's `spec.keys`, lets `edit` change it, and writes it back with a
/// merge patch conditional on the resourceVersion read; retries on a conflict. Returns
/// the number of keys written.
async fn edit_keys(
    api: &Api<AIConsumer>,
    consumer: &ConsumerRef,
    mut edit: impl FnMut(&mut Vec<Value>) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    for _ in 0..PATCH_ATTEMPTS {
        let current = get_consumer(api, consumer).await?;
        let mut keys: Vec<Value> = current
            .spec
            .keys
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .context("cannot encode spec.keys")?;
        edit(&mut keys)?;
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"keys": keys},
        });
        match api
            .patch(
                &consumer.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(keys.len()),
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot update spec.keys of AIConsumer {consumer}"));
            }
        }
    }
    bail!("AIConsumer {consumer} kept changing while its keys were edited; try again")
}

fn secret_name(entry: &Value) -> Option<&str> {
    entry.pointer("/secretRef/name").and_then(Value::as_str)
}

/// The Secret holding `key`, owned by the consumer.
fn key_secret(
    current: &AIConsumer,
    consumer: &ConsumerRef,
    name: &str,
    data_key: &str,
    key: &GatewayKey,
) -> anyhow::Result<Secret> {
    let owner = OwnerReference {
        api_version: AIConsumer::api_version(&()).into_owned(),
        kind: AIConsumer::kind(&()).into_owned(),
        name: consumer.name.clone(),
        uid: current
            .metadata
            .uid
            .clone()
            .ok_or_else(|| anyhow!("AIConsumer {consumer} has no uid"))?,
        ..Default::default()
    };
    let mut labels = BTreeMap::new();
    if is_label_value(&consumer.name) {
        labels.insert(CONSUMER_LABEL.to_string(), consumer.name.clone());
    }
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "switchboard-operator".to_string(),
    );
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(consumer.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                CONSUMER_LABEL.to_string(),
                consumer.name.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            data_key.to_string(),
            ByteString(key.expose().as_bytes().to_vec()),
        )])),
        ..Default::default()
    })
}

/// Whether `keys create` made the Secret with this metadata for consumer `name`.
fn made_for(meta: &ObjectMeta, name: &str) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(CONSUMER_LABEL))
        .is_some_and(|owner| owner == name)
}

/// `<consumer>-key-<8 random hex digits>`, shortened to fit a Secret name.
fn default_secret_name(consumer: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow!("the operating system's random source failed: {error}"))?;
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let suffix = format!("-key-{suffix}");
    let room = 253 - suffix.len();
    let prefix = consumer
        .get(..consumer.len().min(room))
        .unwrap_or(consumer)
        .trim_end_matches(['-', '.']);
    Ok(format!("{prefix}{suffix}"))
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && !name.is_empty() && name.split('.').all(is_dns_label_part)
}

fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_label_part(name)
}

fn is_dns_label_part(part: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    part.starts_with(alnum) && part.ends_with(alnum) && part.chars().all(|c| alnum(c) || c == '-')
}

/// A label value: at most 63 characters, alphanumerics, `-`, `_` and `.`, starting and
/// ending with an alphanumeric. Consumer names are DNS subdomains, so only the length
/// can rule one out.
fn is_label_value(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    value.len() <= 63
        && value.starts_with(alnum)
        && value.ends_with(alnum)
        && value
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_base64url_with_the_prefix_and_never_debug_printed() {
        let a = GatewayKey::generate().unwrap();
        let b = GatewayKey::generate().unwrap();
        assert_ne!(a, b);
        for key in [&a, &b] {
            assert_eq!(key.expose().len(), KEY_LEN);
            assert_eq!(KEY_LEN, 49);
            let body = key.expose().strip_prefix(KEY_PREFIX).unwrap();
            assert!(
                body.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{body}"
            );
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .unwrap();
            assert_eq!(decoded.len(), KEY_BYTES);
            let printed = format!("{key:?}");
            assert!(!printed.contains(body), "{printed}");
        }
        // Every generated key passes compile's checks (length, estimate, placeholders).
        for _ in 0..1000 {
            let key = GatewayKey::generate().unwrap();
            assert_eq!(
                switchboard_api::keys::check_gateway_key(key.expose(), false),
                Ok(())
            );
        }
    }

    #[test]
    fn consumer_references_are_namespace_slash_name() {
        let parsed: ConsumerRef = "team-a/app.v2".parse().unwrap();
        assert_eq!(parsed.namespace, "team-a");
        assert_eq!(parsed.name, "app.v2");
        assert_eq!(parsed.to_string(), "team-a/app.v2");
        for bad in [
            "app",
            "/app",
            "team-a/",
            "Team/app",
            "team-a/App",
            "a.b/app",
            "a/b/c",
        ] {
            assert!(bad.parse::<ConsumerRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_secret_names_are_valid_and_distinct() {
        let long = "a".repeat(253);
        for consumer in ["app", long.as_str(), "my.app-"] {
            let one = default_secret_name(consumer).unwrap();
            let two = default_secret_name(consumer).unwrap();
            assert_ne!(one, two);
            assert!(is_dns_subdomain(&one), "{one}");
            assert!(one.contains("-key-"), "{one}");
        }
    }

    #[test]
    fn the_table_shows_names_and_never_values() {
        let table = render(&[
            KeyInfo {
                secret: "app-key-1".into(),
                key: "key".into(),
                exists: true,
                created: Some("2025-01-01T00:00:00Z".into()),
                managed: true,
            },
            KeyInfo {
                secret: "mine".into(),
                key: "token".into(),
                exists: false,
                created: None,
                managed: false,
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("SECRET"), "{table}");
        assert!(lines[1].contains("app-key-1") && lines[1].contains("keys create"));
        assert!(lines[2].contains("mine") && lines[2].contains("missing"));
    }
}
