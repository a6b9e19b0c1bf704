//! Static startup settings, parsed once from flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Switchboard proxy: one OpenAI-compatible endpoint in front of many LLM providers.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-proxy", version, about)]
pub struct Settings {
    /// Directory of YAML manifests (AIProvider, AIRoute, AIConsumer, AIQuota, Secret) to
    /// serve from (standalone mode). Reloaded when files change.
    #[arg(
        long,
        env = "SWITCHBOARD_MANIFESTS",
        value_name = "DIR",
        required_unless_present = "operator",
        conflicts_with = "operator"
    )]
    pub manifests: Option<PathBuf>,

    /// The platform namespace of the manifests: its routes may be offered to every
    /// namespace's consumers and its quotas may limit them (docs/configuration.md,
    /// "Namespaces and teams"). Through the operator, the operator's flag decides.
    #[arg(long, env = "SWITCHBOARD_PLATFORM_NAMESPACE", value_name = "NAMESPACE")]
    pub platform_namespace: Option<String>,

    /// Serve a manifests directory that holds no Switchboard object at all. Without it
    /// such a directory is refused like any broken config (at start: the proxy does not
    /// start; on reload: the previous config keeps serving), since it is usually a
    /// config caught while being replaced.
    #[arg(long, env = "SWITCHBOARD_ALLOW_EMPTY_CONFIG")]
    pub allow_empty_config: bool,

    /// The operator's config service (`https://...`) to take config from, instead of
    /// manifests on disk.
    #[arg(long, env = "SWITCHBOARD_OPERATOR", value_name = "URL", requires_all = ["operator_token_file", "operator_ca_file"])]
    pub operator: Option<url::Url>,

    /// File holding the bearer token for the operator (mounted from a Secret); read on
    /// every connection, so a rotated token takes effect without a restart.
    #[arg(long, env = "SWITCHBOARD_OPERATOR_TOKEN_FILE", value_name = "FILE")]
    pub operator_token_file: Option<PathBuf>,

    /// PEM CA certificate(s) the operator's certificate must chain to.
    #[arg(long, env = "SWITCHBOARD_OPERATOR_CA_FILE", value_name = "FILE")]
    pub operator_ca_file: Option<PathBuf>,

    /// Where the last good Snapshot from the operator is kept (mode 0600). The proxy
    /// boots from it when the operator cannot be reached.
    #[arg(
        long,
        env = "SWITCHBOARD_SNAPSHOT_CACHE",
        value_name = "FILE",
        default_value = "/var/lib/switchboard/snapshot.json"
    )]
    pub snapshot_cache: PathBuf,

    /// This proxy's name towards the operator (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value_t = default_proxy_id())]
    pub proxy_id: String,

    /// Address to serve clients on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain to serve clients over TLS (HTTP/1.1 and HTTP/2, by ALPN).
    /// Without it clients are served plain HTTP. Read again every
    /// `--tls-reload-interval`: a renewed certificate needs no restart.
    #[arg(
        long,
        env = "SWITCHBOARD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(
        long,
        env = "SWITCHBOARD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// How often the certificate and key files are read again; a new pair that parses
    /// and matches is served to new connections, a bad one is logged and the old pair
    /// kept. `0s`: never.
    #[arg(long, env = "SWITCHBOARD_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Address to serve Prometheus metrics on (`/metrics`), or `off` for no metrics at
    /// all (none recorded either).
    #[arg(long, env = "SWITCHBOARD_METRICS_LISTEN", default_value = "0.0.0.0:9091", value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,

    /// Whether metrics carry a `consumer` label. Turn it off when consumers are many
    /// (each one multiplies the series of every counter it touches).
    #[arg(long, env = "SWITCHBOARD_METRICS_CONSUMER_LABEL", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub metrics_consumer_label: bool,

    /// Put request and response bodies (prompts and completions) in the access log, up
    /// to `--log-body-max-bytes` each. Off by default: bodies may hold personal data.
    #[arg(long, env = "SWITCHBOARD_LOG_BODIES")]
    pub log_bodies: bool,

    /// With `--log-bodies`, the most bytes of each body logged; the rest is cut and
    /// the line says so.
    #[arg(long, env = "SWITCHBOARD_LOG_BODY_MAX_BYTES", default_value_t = 4096)]
    pub log_body_max_bytes: usize,

    /// Redis for quota counters shared by every proxy (`redis://host:6379/0`, or
    /// `rediss://` for TLS). Without it each proxy enforces quotas on its own counters.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// File holding the Redis password (mounted from a Secret); read at start.
    #[arg(long, env = "SWITCHBOARD_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// The most a Redis operation may add to a request; past it, each quota's
    /// failurePolicy applies.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Where cached answers live: `memory` (this proxy's), `redis` (shared by every
    /// proxy; needs `--redis-url`), or `auto`: Redis when `--redis-url` is set.
    #[arg(
        long,
        env = "SWITCHBOARD_CACHE_STORE",
        value_enum,
        default_value = "auto"
    )]
    pub cache_store: CacheStore,

    /// The most bytes of answers the in-memory cache holds; the least used go first.
    #[arg(long, env = "SWITCHBOARD_CACHE_MEMORY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_memory_bytes: u64,

    /// Log format: `text` for people, `json` for log pipelines. Levels via RUST_LOG.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest request head (request line and headers), in bytes; larger heads get 431
    /// (in the client API's format up to twice this size, a bare 431 beyond).
    #[arg(long, env = "SWITCHBOARD_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// How long a client may take to send its request head (request line and
    /// headers), and with `--tls-cert` to complete its TLS handshake; past it the
    /// connection is closed. Stops connections that trickle their head (or never finish
    /// a handshake) from holding a slot forever.
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a client may take to send its whole request body; past it the request
    /// gets 408 in its API's format.
    #[arg(long, env = "SWITCHBOARD_BODY_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// Largest whole (not streamed) response body read from a provider, in bytes; a
    /// larger one fails the attempt (502 `upstream_response_too_large`, and the next
    /// backend is tried). Read as it arrives: no more than this is ever held.
    #[arg(long, env = "SWITCHBOARD_MAX_UPSTREAM_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_upstream_body_bytes: usize,

    /// Largest single event of a provider's stream, in bytes (data lines and blank line
    /// included). A larger one ends the stream with an error event; before the stream's
    /// first event it fails the attempt, and the next backend is tried. 4 MiB leaves
    /// room for inline images in a single event.
    #[arg(long, env = "SWITCHBOARD_MAX_STREAM_EVENT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_stream_event_bytes: usize,

    /// The longest a provider's stream may send nothing (not even a keep-alive comment)
    /// once its headers arrived; past it the stream ends with an error event (before
    /// its first event, the attempt fails and the next backend is tried). `0s`: none.
    #[arg(long, env = "SWITCHBOARD_STREAM_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Duration,

    /// The most bytes one provider stream may send; past it the stream ends with an
    /// error event. Streams are relayed event by event, so this bounds time and
    /// traffic, not memory (`--max-stream-event-bytes` does that).
    #[arg(long, env = "SWITCHBOARD_MAX_STREAM_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_stream_bytes: u64,

    /// The longest one provider stream may last from its response headers; past it the
    /// stream ends with an error event. `0s`: no limit.
    #[arg(long, env = "SWITCHBOARD_MAX_STREAM_DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_stream_duration: Duration,

    /// Threads serving requests. Default: the CPUs the process may use (the pod's CPU
    /// limit included). With one, requests are served in the order they became ready
    /// (a current-thread runtime), which keeps the tail short under load
    /// (docs/proxy.md, "Connections and load").
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// The most client connections served at once. Past it, up to 64 more are
    /// accepted to answer `/healthz` and `/readyz` and to give every other request 503
    /// with `Retry-After`; past those, new connections are closed at once. Lowered at
    /// start to fit the open-file limit (docs/proxy.md, "Connections and load").
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// The most requests served at once (streams count until they end); past it,
    /// requests get 503 `gateway_overloaded` with `Retry-After: 1`. Probes are always
    /// answered. Lowered at start to fit the open-file limit.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT",
        default_value_t = 4096
    )]
    pub max_requests_in_flight: usize,

    /// How long a new connection may take to send its first byte; past it, it is
    /// closed. Nothing is set up for a connection (no HTTP state, no TLS) until then.
    #[arg(long, env = "SWITCHBOARD_CONNECTION_FIRST_BYTE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connection_first_byte_timeout: Duration,

    /// How long a connection (HTTP/1 or HTTP/2) may stay quiet with no request open,
    /// or with a response the client does not read; past it, it is closed (after its
    /// open requests, when there are some). Longer than the 60 s idle timeout of common
    /// load balancers, so that they close first and never send to a closing connection.
    #[arg(long, env = "SWITCHBOARD_CONNECTION_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub connection_idle_timeout: Duration,

    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Check the manifests, print every object's status, and exit (non-zero on problems).
    #[arg(long, requires = "manifests")]
    pub check: bool,
}

/// Where cached answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheStore {
    Auto,
    Memory,
    Redis,
}

/// Where metrics are served: an address, or nowhere (`off`: none are recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

// === impl Settings ===

impl Settings {
    /// Settings for `dir` on a free loopback port, for tests and embedding.
    pub fn for_manifests(dir: impl Into<PathBuf>) -> Self {
        Self {
            manifests: Some(dir.into()),
            platform_namespace: None,
            allow_empty_config: false,
            operator: None,
            operator_token_file: None,
            operator_ca_file: None,
            snapshot_cache: PathBuf::from("/var/lib/switchboard/snapshot.json"),
            proxy_id: default_proxy_id(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: None,
            tls_key: None,
            tls_reload_interval: Duration::from_secs(5),
            metrics_listen: MetricsListen(Some(SocketAddr::from(([127, 0, 0, 1], 0)))),
            metrics_consumer_label: true,
            log_bodies: false,
            log_body_max_bytes: 4096,
            redis_url: None,
            redis_password_file: None,
            redis_timeout: Duration::from_millis(100),
            cache_store: CacheStore::Auto,
            cache_memory_bytes: 256 * 1024 * 1024,
            log_format: LogFormat::Text,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_upstream_body_bytes: 64 * 1024 * 1024,
            max_stream_event_bytes: 4 * 1024 * 1024,
            stream_idle_timeout: Duration::from_secs(120),
            max_stream_bytes: 256 * 1024 * 1024,
            max_stream_duration: Duration::from_secs(3600),
            worker_threads: None,
            max_connections: 16_384,
            max_requests_in_flight: 4096,
            connection_first_byte_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(90),
            shutdown_timeout: Duration::from_secs(30),
            check: false,
        }
    }
}

/// `off` or a socket address.
fn parse_metrics_listen(value: &str) -> Result<MetricsListen, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen(None));
    }
    value
        .parse()
        .map(|addr| MetricsListen(Some(addr)))
        .map_err(|e| format!("{e}: expected an address such as 0.0.0.0:9091, or off"))
}

/// Outside a pod (no POD_NAME): the host name, or `proxy` when there is none.
fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if host.is_empty() {
        "proxy".to_string()
    } else {
        host
    }
}
