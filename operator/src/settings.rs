//! Static startup settings of `switchboard-operator run`, parsed once from flags and
//! environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Settings of the control plane.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Kubeconfig to use instead of the in-cluster config or $KUBECONFIG (for running the
    /// operator from a laptop against a cluster).
    #[arg(long, env = "SWITCHBOARD_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(long, env = "SWITCHBOARD_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// The platform namespace: its AIRoutes may be offered to every namespace's
    /// consumers (`spec.allowedConsumers`) and its AIQuotas may limit them. Unset: every
    /// namespace keeps to itself (docs/configuration.md, "Namespaces and teams").
    #[arg(long, env = "SWITCHBOARD_PLATFORM_NAMESPACE", value_name = "NAMESPACE")]
    pub platform_namespace: Option<String>,

    /// Address of the config service proxies connect to (HTTPS).
    #[arg(
        long,
        env = "SWITCHBOARD_CONFIG_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub config_listen: SocketAddr,

    /// Address of /metrics, /healthz, /readyz and /debug/* (plain HTTP).
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain the config service presents. Read again every
    /// `--tls-reload-interval`: a renewed certificate needs no restart.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: PathBuf,

    /// PEM private key of that certificate.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", value_name = "FILE")]
    pub tls_key: PathBuf,

    /// How often the certificate and key files are read again; a new pair that parses
    /// and matches is served to new connections, a bad one is logged and the old pair
    /// kept. `0s`: never.
    #[arg(long, env = "SWITCHBOARD_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// File holding the bearer token proxies must present (mounted from a Secret).
    /// Re-read every 5 s off the request path, so a rotated token takes effect without a
    /// restart.
    #[arg(long, env = "SWITCHBOARD_TOKEN_FILE", value_name = "FILE")]
    pub token_file: PathBuf,

    /// This replica's name in the Lease and in Events; the pod name in a cluster.
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    pub identity: String,

    /// Namespace of the Lease that elects the replica writing statuses and Events.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of that Lease.
    #[arg(
        long,
        env = "SWITCHBOARD_LEASE_NAME",
        default_value = "switchboard-operator"
    )]
    pub lease_name: String,

    /// How long a leader's Lease lasts without renewal: a dead leader is replaced within it.
    #[arg(long, env = "SWITCHBOARD_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// Changes arriving within this window are compiled together.
    #[arg(long, env = "SWITCHBOARD_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,

    /// How long the config service holds a proxy's request open when nothing changed.
    #[arg(long, env = "SWITCHBOARD_POLL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_timeout: Duration,

    /// The Redis proxies keep quota counters in (`redis://host:6379/0`, `rediss://` for
    /// TLS). With it the leader writes each AIQuota's usage into its status.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// File holding the Redis password (mounted from a Secret); read at start.
    #[arg(long, env = "SWITCHBOARD_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// How often the leader refreshes AIQuota usage in status (never per request).
    #[arg(long, env = "SWITCHBOARD_QUOTA_STATUS_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub quota_status_interval: Duration,

    /// Log format: `text` for people, `json` for log pipelines. Levels via RUST_LOG.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Outside a pod (no POD_NAME): the host name plus a random suffix, so two operators
/// started on one laptop do not share an identity.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "operator".to_string()
    } else {
        host
    };
    format!("{host}-{:04x}", fastrand::u16(..))
}
