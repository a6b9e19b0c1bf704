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
    /// serve from. Reloaded when files change.
    #[arg(long, env = "SWITCHBOARD_MANIFESTS", value_name = "DIR")]
    pub manifests: PathBuf,

    /// Address to serve clients on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

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

    /// Largest request head (request line and headers), in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Check the manifests, print every object's status, and exit (non-zero on problems).
    #[arg(long)]
    pub check: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// === impl Settings ===

impl Settings {
    /// Settings for `dir` on a free loopback port, for tests and embedding.
    pub fn for_manifests(dir: impl Into<PathBuf>) -> Self {
        Self {
            manifests: dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: LogFormat::Text,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            check: false,
        }
    }
}
