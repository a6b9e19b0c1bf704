//! The operator end-to-end harness: the Kubernetes API emulator, `switchboard-operator`
//! processes pointed at it with a kubeconfig, and proxies in `--operator` mode, all on
//! loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kube_emulator::KubeEmulator;
use crate::{POLL, Process, Proxy, TempDir, free_port, http_client, release_bin};

/// The operator binary: `$SWITCHBOARD_OPERATOR_BIN`, or the release build.
pub fn operator_bin() -> PathBuf {
    release_bin("switchboard-operator", "SWITCHBOARD_OPERATOR_BIN")
}

/// CA, server certificate and token from `switchboard-operator dev-pki`.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn generate() -> Self {
        let dir = TempDir::new("pki");
        let status = std::process::Command::new(operator_bin())
            .args(["dev-pki", "--out"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run switchboard-operator dev-pki");
        assert!(status.success(), "dev-pki failed: {status}");
        Self { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.file("token")).expect("read token")
    }
}

/// The emulator, its kubeconfig and the PKI shared by operators and proxies.
#[derive(Debug)]
pub struct Cluster {
    pub api: KubeEmulator,
    pub pki: Pki,
    kubeconfig_dir: TempDir,
}

impl Cluster {
    /// The condition `type_` of a switchboard object in the emulator.
    pub fn condition(&self, kind: &str, namespace: &str, name: &str, type_: &str) -> Option<Value> {
        let object = self
            .api
            .get("switchboard.dev/v1alpha1", kind, Some(namespace), name)?;
        object["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Waits until that condition has `status`; returns it.
    pub async fn wait_condition(
        &self,
        (kind, namespace, name): (&str, &str, &str),
        type_: &str,
        status: &str,
        within: Duration,
    ) -> Value {
        eventually(
            &format!("{kind} {namespace}/{name} {type_}={status}"),
            within,
            || async {
                self.condition(kind, namespace, name, type_)
                    .filter(|c| c["status"] == status)
            },
        )
        .await
    }

    pub async fn start() -> Self {
        let api = KubeEmulator::start().await;
        let kubeconfig_dir = TempDir::new("kubeconfig");
        api.write_kubeconfig(&kubeconfig_dir.path().join("config"))
            .expect("write kubeconfig");
        Self {
            api,
            pki: Pki::generate(),
            kubeconfig_dir,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig_dir.path().join("config")
    }

    /// Starts an operator replica named `identity` and waits until it serves a config.
    pub async fn operator(&self, identity: &str) -> Operator {
        Operator::start(self, identity, &[]).await
    }

    /// As `operator`, with extra flags.
    pub async fn operator_with(&self, identity: &str, extra: &[&str]) -> Operator {
        Operator::start(self, identity, extra).await
    }

    /// Starts a proxy in operator mode against `operator`, caching to `cache`, and waits
    /// until it is ready (serves some Snapshot).
    pub async fn proxy(&self, id: &str, operator: &Operator, cache: &Path) -> Proxy {
        self.proxy_to(id, &operator.config_url(), cache).await
    }

    /// As `proxy`, against any config-service URL (even one nobody listens on).
    pub async fn proxy_to(&self, id: &str, url: &str, cache: &Path) -> Proxy {
        let args = self.proxy_args(id, url, cache);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start_args(&args, &[]).await
    }

    pub fn proxy_args(&self, id: &str, url: &str, cache: &Path) -> Vec<String> {
        vec![
            "--operator".into(),
            url.into(),
            "--operator-token-file".into(),
            self.pki.file("token").display().to_string(),
            "--operator-ca-file".into(),
            self.pki.file("ca.pem").display().to_string(),
            "--snapshot-cache".into(),
            cache.display().to_string(),
            "--proxy-id".into(),
            id.into(),
        ]
    }
}

/// A running `switchboard-operator`; killed on drop.
#[derive(Debug)]
pub struct Operator {
    pub process: Process,
    pub identity: String,
    pub admin: SocketAddr,
    pub config: SocketAddr,
}

impl Operator {
    async fn start(cluster: &Cluster, identity: &str, extra: &[&str]) -> Self {
        for attempt in 1..=3 {
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let config = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut args: Vec<String> = vec![
                "run".into(),
                "--kubeconfig".into(),
                cluster.kubeconfig().display().to_string(),
                "--tls-cert".into(),
                cluster.pki.file("tls.crt").display().to_string(),
                "--tls-key".into(),
                cluster.pki.file("tls.key").display().to_string(),
                "--token-file".into(),
                cluster.pki.file("token").display().to_string(),
                "--config-listen".into(),
                config.to_string(),
                "--admin-listen".into(),
                admin.to_string(),
                "--identity".into(),
                identity.into(),
                "--lease-namespace".into(),
                "switchboard-system".into(),
                "--lease-duration".into(),
                "3s".into(),
                "--debounce".into(),
                "50ms".into(),
            ];
            args.extend(extra.iter().map(ToString::to_string));
            let process = Process::spawn(&operator_bin(), &args, &[]);
            let mut operator = Self {
                process,
                identity: identity.into(),
                admin,
                config,
            };
            match operator.wait_ready(Duration::from_secs(15)).await {
                Ok(()) => return operator,
                Err(exited) => {
                    let logs = operator.process.logs();
                    if exited && logs.contains("cannot listen") && attempt < 3 {
                        continue;
                    }
                    panic!("operator {identity} did not become ready; its output:\n{logs}");
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `Err(true)` if the process exited, `Err(false)` on timeout.
    async fn wait_ready(&mut self, within: Duration) -> Result<(), bool> {
        let client = http_client();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.process.has_exited() {
                return Err(true);
            }
            let ready = client
                .get(self.admin_url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Err(false)
    }

    /// The config service URL proxies use (the certificate names `localhost`).
    pub fn config_url(&self) -> String {
        format!("https://localhost:{}", self.config.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `GET` an admin path as JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        http_client()
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin JSON")
    }

    pub async fn admin_text(&self, path: &str) -> String {
        http_client()
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin request")
            .text()
            .await
            .expect("admin text")
    }

    pub async fn is_leader(&self) -> bool {
        self.admin_json("/debug/proxies").await["leader"] == true
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
