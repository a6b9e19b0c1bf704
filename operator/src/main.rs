//! `switchboard-operator`: flags, logging, signals. The work happens in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_operator::Settings;
use switchboard_operator::settings::LogFormat;
use tracing_subscriber::EnvFilter;

/// Switchboard operator: watches AIProvider, AIRoute, AIConsumer, AIQuota and Secrets,
/// compiles them, and serves the result to proxies.
#[derive(Debug, Parser)]
#[command(name = "switchboard-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Run(Box<Settings>),
    /// Print every CustomResourceDefinition as YAML, for `kubectl apply -f -`.
    Crds,
    /// Write a throwaway CA, config-service certificate and token into a directory, for
    /// running the operator and proxies outside a cluster.
    DevPki {
        /// Directory to write ca.pem, tls.crt, tls.key and token into.
        #[arg(long, default_value = "switchboard-pki")]
        out: std::path::PathBuf,
        /// Names and addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds => match switchboard_api::crds::all_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot render CRDs: {error}");
                ExitCode::FAILURE
            }
        },
        Command::DevPki { out, hosts } => match switchboard_operator::pki::generate(&out, &hosts) {
            Ok(pki) => {
                println!(
                    "wrote {}, {}, {} and {}",
                    pki.ca.display(),
                    pki.cert.display(),
                    pki.key.display(),
                    pki.token.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(settings) => {
            init_logging(settings.log_format);
            match switchboard_operator::run(*settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in a log file or pipeline are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
