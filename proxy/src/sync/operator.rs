//! Operator mode: Snapshots from the operator's config service, kept on disk.
//!
//! The proxy holds a long poll (`GET /v1/snapshot?proxy=ID&version=V&wait=S`) over TLS,
//! verified against `--operator-ca-file`, with the bearer token from
//! `--operator-token-file` (re-read on every request, so rotation needs no restart).
//! The CA file is read again before every poll; when its contents change the client is
//! rebuilt to trust the new bundle, so a rotated CA needs no restart either (a bundle
//! that does not parse is logged and the old one kept).
//! Each poll reports the version it serves; the answer is a new Snapshot as soon as
//! one is published, or 304 after `wait` seconds.
//!
//! A Snapshot is served only if it passes `Snapshot::validate` and builds a Runtime;
//! otherwise the current one stays. Each accepted Snapshot is written (mode 0600,
//! atomically) to `--snapshot-cache`; at boot the proxy serves from that file at once,
//! so a restart while the operator is away still serves the last good config.
//! Connection failures retry with jittered exponential backoff.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use switchboard_api::Snapshot;
use switchboard_certs::WatchedFile;

use crate::gateway::Gateway;
use crate::runtime::Runtime;

/// How long the operator may hold a poll before answering 304.
const WAIT: Duration = Duration::from_secs(25);
/// Beyond `WAIT`, how long a poll may take before the proxy gives up on the connection.
const SLACK: Duration = Duration::from_secs(15);
/// Backoff between failed polls: doubling from `BACKOFF_MIN` to `BACKOFF_MAX`, jittered.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where to get Snapshots from.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub url: url::Url,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub cache: PathBuf,
    pub proxy_id: String,
}

/// Polls the operator until dropped.
#[derive(Debug)]
pub struct SyncTask(tokio::task::JoinHandle<()>);

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a poll did not produce a Snapshot.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot read token file {0}: {1}")]
    Token(String, std::io::Error),
    #[error("operator unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("operator answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// Boots from the cached Snapshot if there is a valid one, then polls in the background.
pub fn start(config: OperatorConfig, gateway: Arc<Gateway>) -> anyhow::Result<SyncTask> {
    let mut ca = WatchedFile::new(&config.ca_file);
    let pem = ca
        .changed()
        .with_context(|| {
            format!(
                "cannot read --operator-ca-file {}",
                config.ca_file.display()
            )
        })?
        .unwrap_or_default();
    let client = client(&pem, &config.ca_file)?;
    match fs::read(&config.cache) {
        Ok(bytes) => match accept(&Bytes::from(bytes), &gateway) {
            Ok(runtime) => {
                tracing::info!(
                    version = %runtime.version(),
                    file = %config.cache.display(),
                    "serving the last good config from disk until the operator answers"
                );
                gateway.install(runtime);
            }
            Err(error) => tracing::warn!(
                file = %config.cache.display(),
                %error,
                "ignoring the cached config"
            ),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(file = %config.cache.display(), %error, "cannot read the cached config")
        }
    }
    Ok(SyncTask(tokio::spawn(run(config, client, ca, gateway))))
}

/// A client that trusts only the CA bundle `pem` (read from `ca_file`).
fn client(pem: &[u8], ca_file: &Path) -> anyhow::Result<reqwest::Client> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .with_context(|| format!("{} is not a PEM certificate bundle", ca_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", ca_file.display());
    }
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .connect_timeout(Duration::from_secs(5))
        .timeout(WAIT + SLACK)
        .retry(reqwest::retry::never())
        .user_agent(concat!("switchboard-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the operator client")
}

/// Rebuilds `client` when the CA file's contents changed. A file that cannot be read or
/// parsed is logged and the current client kept.
async fn refresh_ca(ca: &mut WatchedFile, client: &mut reqwest::Client) {
    let mut file = ca.clone();
    let Ok((file, changed)) = tokio::task::spawn_blocking(move || {
        let changed = file.changed();
        (file, changed)
    })
    .await
    else {
        return;
    };
    *ca = file;
    match changed {
        Ok(None) => {}
        Ok(Some(pem)) => match self::client(&pem, ca.path()) {
            Ok(rebuilt) => {
                *client = rebuilt;
                tracing::info!(file = %ca.path().display(), "the operator's CA changed; trusting the new bundle");
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "refused the changed operator CA; keeping the previous one")
            }
        },
        Err(error) => {
            tracing::warn!(%error, "cannot read the operator CA; keeping the previous one")
        }
    }
}

async fn run(
    config: OperatorConfig,
    mut client: reqwest::Client,
    mut ca: WatchedFile,
    gateway: Arc<Gateway>,
) {
    let mut failures: u32 = 0;
    loop {
        refresh_ca(&mut ca, &mut client).await;
        let version = gateway
            .runtime
            .current()
            .map(|r| r.version().to_string())
            .unwrap_or_default();
        let failed = match poll(&client, &config, &version).await {
            Ok(None) => false,
            Ok(Some(body)) => match accept_off_runtime(body.clone(), &gateway).await {
                Ok(runtime) => {
                    let new = runtime.version().to_string();
                    gateway.install(runtime);
                    tracing::info!(version = %new, previous = %version, "config received from the operator");
                    save(&config.cache, body).await;
                    false
                }
                Err(error) => {
                    // The operator will offer the same Snapshot again: back off.
                    tracing::error!(%error, "refused a config from the operator; still serving {version}");
                    gateway.refused();
                    true
                }
            },
            Err(error) => {
                tracing::warn!(%error, attempt = failures + 1, "no config from the operator; retrying");
                true
            }
        };
        if failed {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(failures)).await;
        } else {
            failures = 0;
        }
    }
}

/// One long poll: `Some(body)` when the operator sent a Snapshot.
async fn poll(
    client: &reqwest::Client,
    config: &OperatorConfig,
    version: &str,
) -> Result<Option<Bytes>, PollError> {
    let token = tokio::fs::read_to_string(&config.token_file)
        .await
        .map_err(|e| PollError::Token(config.token_file.display().to_string(), e))?;
    let mut url = config.url.clone();
    url.set_path("/v1/snapshot");
    url.query_pairs_mut()
        .clear()
        .append_pair("proxy", &config.proxy_id)
        .append_pair("version", version)
        .append_pair("wait", &WAIT.as_secs().to_string());
    let response = client.get(url).bearer_auth(token.trim()).send().await?;
    match response.status().as_u16() {
        200 => Ok(Some(response.bytes().await?)),
        304 => Ok(None),
        status => {
            let body = response.text().await.unwrap_or_default();
            Err(PollError::Status {
                status,
                body: body.chars().take(512).collect(),
            })
        }
    }
}

/// `accept` on a blocking thread: a large Snapshot takes tens of milliseconds to parse,
/// check and build, which must not stall requests on the runtime's threads.
async fn accept_off_runtime(body: Bytes, gateway: &Arc<Gateway>) -> Result<Runtime, String> {
    let gateway = gateway.clone();
    tokio::task::spawn_blocking(move || accept(&body, &gateway))
        .await
        .map_err(|e| format!("building the config failed: {e}"))?
}

/// Parses, validates and builds a Snapshot; the Runtime to swap in.
fn accept(body: &Bytes, gateway: &Gateway) -> Result<Runtime, String> {
    let snapshot: Snapshot =
        serde_json::from_slice(body).map_err(|e| format!("not a Snapshot: {e}"))?;
    snapshot.validate()?;
    let current = gateway.runtime.current();
    Runtime::build(snapshot, current.as_deref(), gateway.metrics.as_ref())
        .map_err(|e| e.to_string())
}

/// Writes the Snapshot to `path` atomically (temporary file, then rename), readable by
/// this user only: it holds provider keys.
async fn save(path: &Path, body: Bytes) {
    let path = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || write_private(&path, &body)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot keep the config on disk; a restart without the operator would serve nothing")
        }
        Err(error) => tracing::warn!(%error, "cannot keep the config on disk"),
    }
}

fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(body)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

/// Jittered, so a fleet of proxies does not reconnect in lockstep after an operator
/// restart.
fn backoff(failures: u32) -> Duration {
    crate::plan::backoff(BACKOFF_MIN, BACKOFF_MAX, failures.saturating_add(1))
}

#[cfg(test)]
mod tests;
