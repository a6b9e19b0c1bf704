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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
