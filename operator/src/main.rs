//! `switchboard-operator`: the control plane. For now it prints the CRDs; watching,
//! status and Snapshot distribution arrive with the operator work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Print every CustomResourceDefinition as YAML, for `kubectl apply -f -`.
    Crds,
}

fn main() -> ExitCode {
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
    }
}
